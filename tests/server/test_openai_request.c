/* Request validation: every field's type and range, with messages that name the field. */
#include <stdio.h>
#include <string.h>

#include "server/openai_request.h"

#include "../lib/test_util.h"

static void bad(enum request_kind kind, const char *body, const char *needle)
{
    openai_request r;
    perr err = {{0}};
    int rc = openai_request_parse(kind, body, strlen(body), &r, &err);
    if (rc == 0) {
        fprintf(stderr, "accepted but should not: %s\n", body);
        openai_request_free(&r);
        failures++;
    } else if (!strstr(err.msg, needle)) {
        fprintf(stderr, "message for %s is '%s', expected it to name '%s'\n", body, err.msg, needle);
        failures++;
    }
}

static int good(enum request_kind kind, const char *body, openai_request *r)
{
    perr err = {{0}};
    if (openai_request_parse(kind, body, strlen(body), r, &err) != 0) {
        fprintf(stderr, "rejected %s: %s\n", body, err.msg);
        failures++;
        return -1;
    }
    return 0;
}

int main(void)
{
    const char *U = "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]";
    openai_request r;
    char buf[1024];
    bad(REQ_CHAT, "{", "Invalid JSON");
    bad(REQ_CHAT, "[1]", "JSON object");
    bad(REQ_CHAT, "{} x", "Invalid JSON");
    bad(REQ_CHAT, "{}", "'messages'");
    bad(REQ_CHAT, "{\"messages\":\"hi\"}", "'messages'");
    bad(REQ_CHAT, "{\"messages\":[]}", "'messages'");
    bad(REQ_CHAT, "{\"messages\":[1]}", "'messages[0]'");
    bad(REQ_CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "'messages[0].role'");
    bad(REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "'messages[0].content'");
    bad(REQ_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", "'messages[0].content[0]'");
    bad(REQ_CHAT, "{\"messages\":[{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{bad\"}}]}]}",
        "arguments");
    const char *fields[][2] = {
        {"\"temperature\":\"hot\"", "'temperature'"}, {"\"temperature\":-1", "'temperature'"},
        {"\"top_p\":2", "'top_p'"},                   {"\"top_p\":0", "'top_p'"},
        {"\"top_k\":1.5", "'top_k'"},                 {"\"min_p\":-0.1", "'min_p'"},
        {"\"repetition_penalty\":\"x\"", "'repetition_penalty'"},
        {"\"presence_penalty\":3", "'presence_penalty'"}, {"\"frequency_penalty\":true", "'frequency_penalty'"},
        {"\"max_tokens\":0", "'max_tokens'"},         {"\"max_tokens\":\"10\"", "'max_tokens'"},
        {"\"max_completion_tokens\":-5", "'max_completion_tokens'"},
        {"\"stream\":\"yes\"", "'stream'"},           {"\"stream_options\":{\"include_usage\":1}", "include_usage"},
        {"\"stop\":5", "'stop'"},                     {"\"stop\":[\"a\",1]", "'stop[1]'"},
        {"\"seed\":1.5", "'seed'"},                   {"\"logprobs\":\"x\"", "'logprobs'"},
        {"\"top_logprobs\":50", "'top_logprobs'"},     {"\"top_logprobs\":3", "'top_logprobs'"},
        {"\"tools\":{}", "'tools'"},                  {"\"tools\":[{\"type\":\"function\"}]", "'tools[0]'"},
        {"\"tool_choice\":\"required\"", "'tool_choice'"}, {"\"n\":2", "'n'"},
    };
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        snprintf(buf, sizeof buf, "{%s,%s}", U, fields[i][0]);
        bad(REQ_CHAT, buf, fields[i][1]);
    }
    bad(REQ_COMPLETION, "{}", "'prompt'");
    snprintf(buf, sizeof buf, "{%s,\"max_tokens\":5}", U);
    if (good(REQ_CHAT, buf, &r) == 0) {
        CHECK(r.max_tokens == 5 && !r.logprobs && r.top_logprobs == 0, "max_tokens and logprob defaults");
        openai_request_free(&r);
    }
    bad(REQ_COMPLETION, "{\"prompt\":[1,2]}", "'prompt'");

    snprintf(buf, sizeof buf,
             "{%s,\"temperature\":0,\"top_p\":0.5,\"top_k\":7,\"min_p\":0.1,\"repetition_penalty\":1.1,"
             "\"presence_penalty\":0.5,\"frequency_penalty\":-0.5,\"seed\":42,\"stop\":[\"x\",\"\",\"yz\"],"
             "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"max_completion_tokens\":9,"
             "\"logprobs\":true,\"top_logprobs\":3,\"model\":\"anything\",\"temperature\":null}", U);
    if (good(REQ_CHAT, buf, &r) == 0) {
        CHECK(r.stream && r.include_usage && r.max_tokens == 9 && r.n_stop == 2 && strcmp(r.stop[1], "yz") == 0,
              "stream, usage, max_completion_tokens, stop");
        CHECK(r.logprobs && r.top_logprobs == 3 && r.has_seed && r.seed == 42, "logprobs and seed");
        sampler_params p;
        memset(&p, 0, sizeof p);
        p.temperature = 0.7f;
        openai_request_sampler(&r, &p);
        CHECK(p.temperature == 0 && p.top_p == 0.5f && p.top_k == 7 && p.repetition_penalty == 1.1f && p.has_seed,
              "sampler parameters");
        openai_request_free(&r);
    }
    /* Content parts are joined, null content is empty, string tool arguments become objects. */
    const char *conv = "{\"messages\":[{\"role\":\"system\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                       "{\"type\":\"text\",\"text\":\"b\"}]},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":"
                       "[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\":1}\"}}]},"
                       "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"ok\"}],"
                       "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}";
    if (good(REQ_CHAT, conv, &r) == 0) {
        char *s = cJSON_PrintUnformatted(r.messages);
        CHECK(strstr(s, "\"content\":\"ab\"") != NULL, "content parts joined: %s", s);
        CHECK(strstr(s, "\"arguments\":{\"x\":1}") != NULL, "string arguments become an object: %s", s);
        CHECK(r.tools != NULL, "tools kept");
        cJSON_free(s);
        openai_request_free(&r);
    }
    snprintf(buf, sizeof buf, "{%s,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"none\"}", U);
    if (good(REQ_CHAT, buf, &r) == 0) {
        CHECK(r.tools == NULL, "tool_choice none drops the tools");
        openai_request_free(&r);
    }
    if (good(REQ_COMPLETION, "{\"prompt\":\"def f(\",\"logprobs\":2,\"stop\":\"\\n\"}", &r) == 0) {
        CHECK(strcmp(r.prompt, "def f(") == 0 && r.logprobs && r.top_logprobs == 2 && r.n_stop == 1,
              "completion prompt, logprobs, stop");
        openai_request_free(&r);
    }
    return test_result("openai_request: all checks passed");
}
