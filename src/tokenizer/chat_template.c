/* Chat template: placeholder until the Jinja subset lands; compile/render report it clearly. */
#include "tokenizer/chat_template.h"

#include <stdlib.h>

struct chat_template {
    int unused;
};

int chat_template_compile(const char *source, chat_template **out, perr *err)
{
    *out = NULL;
    (void)source;
    return perr_set(err, "chat template: Jinja renderer not implemented yet");
}

void chat_template_free(chat_template *t)
{
    free(t);
}

int chat_template_render(const chat_template *t, const cJSON *messages, const cJSON *tools,
                         bool add_generation_prompt, const cJSON *extra, char **out, size_t *len, perr *err)
{
    *out = NULL;
    if (len)
        *len = 0;
    return perr_set(err, "chat template: Jinja renderer not implemented yet");
}
