#!/usr/bin/env python3
"""Regenerates jinja_cases.json: expected outputs of punie's Jinja subset, computed with Jinja2
configured as Hugging Face transformers configures it. Needs the jinja2 package; not run by ctest
(the C test reads the generated file). Error cases carry the substring punie's message must contain."""
import json
import sys

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class Generation(Extension):
    """{% generation %} as transformers' AssistantTracker renders it (body unchanged)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception

# (name, template, vars) -> output from Jinja2; (name, template, vars, error_substring) -> must fail.
CASES = [
    # text and whitespace control
    ("text", "hello", {}),
    ("trailing_newline_dropped", "a\n", {}),
    ("two_trailing_newlines", "a\n\n", {}),
    ("crlf_normalised", "a\r\nb\rc", {}),
    ("trim_blocks", "{% if true %}\nyes\n{% endif %}\nafter", {}),
    ("lstrip_blocks", "  {% if true %}\n  yes\n  {% endif %}\n", {}),
    ("lstrip_not_for_vars", "  {{ 'x' }}\n", {}),
    ("lstrip_mid_line", "a  {% if true %}b{% endif %}", {}),
    ("strip_minus", "a  \n {%- if true -%}  \n b {%- endif %}", {}),
    ("var_minus", "a \n{{- 'b' -}}\n c", {}),
    ("plus_disables_lstrip", "  {%+ if true %}x{% endif %}", {}),
    ("plus_disables_trim", "{% if true +%}\nx{% endif %}", {}),
    ("comment", "a{# hidden #}b", {}),
    ("comment_trim", "a\n  {# c #}\nb", {}),
    ("comment_minus", "a   {#- c -#}   b", {}),
    ("raw", "{% raw %}{{ x }}{% if %}{% endraw %}", {}),
    ("raw_no_trim_after_begin", "{% raw %}\n  a\n  {% endraw %}x", {}),
    ("raw_end_lstrip_and_trim", "q\n{% raw %}\n  {% endraw %}\nz", {}),
    ("raw_plus_and_minus", "{% raw %}a\n  {%+ endraw %}x{% raw -%}  \n  {% endraw %}|", {}),
    ("block_then_text_same_line", "{% for i in [1,2] %}{{ i }},{% endfor %}\nend", {}),
    ("var_keeps_newline", "{{ 'a' }}\nb", {}),
    ("lstrip_after_var_same_line", "{{ 'a' }}  {% if true %}b{% endif %}", {}),
    ("lstrip_tab", "x\n\t {% if true %}y{% endif %}", {}),
    # literals and printing
    ("print_types", "{{ 1 }}|{{ 1.5 }}|{{ true }}|{{ none }}|{{ 'str' }}|{{ [1, 'a', none, true] }}|{{ {'k': 'v', 'n': 2} }}", {}),
    ("print_floats", "{{ 1.0 }} {{ 0.1 }} {{ 1e-6 }} {{ 1e16 }} {{ 1e15 }} {{ 123456.789 }} {{ 2.5e-5 }} {{ -0.0 }}", {}),
    ("repr_quotes", "{{ [\"it's\", 'say \"hi\"', 'both \\' \"', 'nl\\n'] }}", {}),
    ("string_escapes", "{{ 'a\\tb\\\\c\\'d\\u00e9\\x41\\n' }}", {}),
    ("adjacent_strings", "{{ 'a' 'b' \"c\" }}", {}),
    ("undefined_prints_empty", "[{{ nothing }}]", {}),
    ("none_prints_None", "{{ x }}", {"x": None}),
    ("tuple_and_list", "{{ (1, 2) }} {{ [] }} {{ () }}", {}),
    ("dict_literal_nested", "{{ {'a': {'b': [1, {'c': 'd'}]}} }}", {}),
    # arithmetic
    ("arith", "{{ 7 + 3 }} {{ 7 - 10 }} {{ 7 * 3 }} {{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }}", {}),
    ("arith_float", "{{ 1.5 + 1 }} {{ 3 / 3 }} {{ 7.5 // 2 }} {{ 7.5 % 2 }} {{ 2 ** -1 }}", {}),
    ("concat", "{{ 'a' ~ 1 ~ none ~ true ~ [1] }}", {}),
    ("str_plus", "{{ 'a' + 'b' }}", {}),
    ("list_plus", "{{ [1] + [2, 3] }}", {}),
    ("str_mul", "{{ 'ab' * 3 }}{{ [0] * 2 }}", {}),
    ("unary", "{{ -x }} {{ +x }} {{ -(1.5) }} {{ not x }}", {"x": 3}),
    ("precedence", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 * 3 ** 2 }}", {}),
    ("concat_binds_tighter_than_plus", "{{ 'a' ~ 1 + 2 }}", {}, "unsupported operand type(s) for +: 'str' and 'int'"),
    ("filter_binds_tight", "{{ -3 | abs }} {{ 1 + [1, 2] | length }}", {}),
    # comparisons and logic
    ("compare", "{{ 1 < 2 }} {{ 2 <= 2 }} {{ 3 > 4 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ 'a' != 'b' }} {{ [1, 2] < [1, 3] }} {{ true == 1 }}", {}),
    ("compare_chain", "{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }}", {}),
    ("and_or_values", "{{ 0 or 'x' }} {{ 'a' and 'b' }} {{ '' and 'b' }}|{{ none or none }}", {}),
    ("not_precedence", "{{ not 1 == 2 }} {{ not true and false }}", {}),
    ("in_ops", "{{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }} {{ '' in 'x' }} {{ 'x' in nothing }}", {}),
    ("cond_expr", "{{ 'y' if x else 'n' }} {{ 'y' if not x else 'n' }} [{{ 'y' if false }}]", {"x": 1}),
    ("undefined_equality", "{{ nothing == none }} {{ nothing != 'x' }} {{ nothing == nothing2 }}", {}),
    # attribute / item access and slicing
    ("attr_item", "{{ d.a }} {{ d['a'] }} {{ d.b.c }} {{ l[0] }} {{ l[-1] }} {{ l.1 }} [{{ l[5] }}] [{{ d.missing }}] [{{ d.missing is defined }}]", {"d": {"a": 1, "b": {"c": "x"}}, "l": [1, 2, 3]}),
    ("attr_on_none_is_undefined", "[{{ x.foo }}] {{ x.foo is defined }}", {"x": None}),
    ("string_index", "{{ s[0] }}{{ s[-1] }}{{ s[1] }}", {"s": "héllo"}),
    ("slices", "{{ l[1:] }} {{ l[:-1] }} {{ l[::-1] }} {{ l[::2] }} {{ l[-2:] }} {{ l[1:3] }} {{ l[5:] }} {{ l[3:1:-1] }}", {"l": [0, 1, 2, 3, 4]}),
    ("string_slices", "{{ s[::-1] }} {{ s[1:3] }} {{ s[-2:] }} {{ s[:0] }}", {"s": "añb€c"}),
    ("dict_methods", "{{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 5) }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.items() | list }}", {"d": {"a": 1, "b": 2}}),
    ("dict_items_key_shadow", "{{ d['items'] }} {{ d.items() | list | length }}", {"d": {"items": "I"}}),
    ("string_methods", "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.strip(' x') }}|{{ s.upper() }}|{{ s.lower() }}", {"s": "  xHello Wörldx  "}),
    ("string_methods2", "{{ s.startswith('ab') }} {{ s.endswith('yz') }} {{ s.split('c') }} {{ 'a  b c '.split() }} {{ 'a,b,c'.split(',', 1) }} {{ s.replace('b', 'B') }} {{ s.find('c') }} {{ s.count('b') }}", {"s": "abcbyz"}),
    ("string_methods3", "{{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }} {{ ', '.join(['a', 'b']) }} {{ 'x.py'.removesuffix('.py') }} {{ 'a\\nb\\r\\nc'.splitlines() }}", {}),
    # statements
    ("if_elif_else", "{% for x in [1, 2, 3] %}{% if x == 1 %}one{% elif x == 2 %}two{% else %}many{% endif %} {% endfor %}", {}),
    ("for_loop_vars", "{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }};{% endfor %}", {}),
    ("for_prev_next", "{% for x in [1, 2, 3] %}[{{ loop.previtem }}|{{ loop.nextitem }}]{% endfor %}", {}),
    ("for_cycle", "{% for x in [1, 2, 3] %}{{ loop.cycle('a', 'b') }}{% endfor %}", {}),
    ("for_else", "{% for x in [] %}x{% else %}empty{% endfor %}{% for x in [1] %}x{% else %}empty{% endfor %}", {}),
    ("for_filter", "{% for x in range(10) if x is odd %}{{ x }}{{ loop.length }},{% endfor %}", {}),
    ("for_dict_items", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", {"d": {"z": 1, "a": [2], "m": None}}),
    ("for_dict_keys_order", "{% for k in d %}{{ k }}{% endfor %}", {"d": {"z": 1, "a": 2, "m": 3}}),
    ("for_break_continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("for_undefined_empty", "[{% for x in nothing %}x{% endfor %}]", {}),
    ("for_nested_loop", "{% for a in [1, 2] %}{% set outer = loop %}{% for b in 'xy' %}{{ outer.index }}{{ loop.index }}{{ b }} {% endfor %}{% endfor %}", {}),
    ("for_unpack_tuple", "{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}", {}),
    ("set_scope", "{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}", {}),
    ("set_in_if_visible", "{% if true %}{% set y = 'in' %}{% endif %}{{ y }}", {}),
    ("namespace", "{% set ns = namespace(found=false, n=0) %}{% for x in [1, 2, 3] %}{% if x == 2 %}{% set ns.found = true %}{% endif %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.found }} {{ ns.n }}", {}),
    ("set_multiple", "{% set a, b = [1, 2] %}{{ a }}{{ b }}", {}),
    ("set_block", "{% set body %}x{{ 1 + 1 }}y{% endset %}[{{ body }}]", {}),
    ("macro", "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('a') }} {{ greet('b', '?') }} {{ greet(name='c', punct='.') }}", {}),
    ("macro_sees_globals", "{% macro m() %}{{ g }}{% endmacro %}{{ m() }}", {"g": "G"}),
    ("macro_recursive", "{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * (fact(n - 1) | int) }}{% endif %}{% endmacro %}{{ fact(5) }}", {}),
    ("macro_missing_arg_undefined", "{% macro m(a, b) %}[{{ b }}]{{ b is defined }}{% endmacro %}{{ m(1) }}", {}),
    ("filter_block", "{% filter upper %}abc{{ 'd' }}{% endfilter %}", {}),
    ("generation_block", "{% generation %}gen{% endgeneration %}", {}),
    # tests
    ("tests", "{{ x is defined }} {{ y is undefined }} {{ n is none }} {{ 's' is string }} {{ 1 is number }} {{ 1.5 is number }} {{ d is mapping }} {{ l is iterable }} {{ l is sequence }} {{ true is true }} {{ false is false }} {{ 1 is true }}", {"x": 1, "n": None, "d": {}, "l": []}),
    ("tests_not", "{{ x is not defined }} {{ n is not none }} {{ 1 is not string }}", {"x": 1, "n": None}),
    ("tests_more", "{{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }} {{ 'ab' is lower }} {{ 'AB' is upper }} {{ 1 is integer }} {{ 1.0 is float }} {{ true is boolean }} {{ x is sameas none }} {{ 2 is eq 2 }} {{ 3 is gt 2 }} {{ 'a' is in 'abc' }}", {"x": None}),
    ("tests_undefined_quirks", "{{ nothing is iterable }} {{ nothing is mapping }} {{ nothing is string }} {{ nothing is none }}", {}),
    # filters
    ("tojson_basic", "{{ v | tojson }}", {"v": {"b": 1, "a": [1, 2.5, "x", None, True, False], "u": "é/\"\\\n\t\u0001\u007f 天", "e": {}, "l": []}}),
    ("tojson_indent", "{{ v | tojson(indent=2) }}|{{ [] | tojson(indent=2) }}|{{ v | tojson(indent=0) }}", {"v": {"a": [1, {"b": None}], "c": {}}}),
    ("tojson_sort_ascii", "{{ v | tojson(sort_keys=true) }} {{ 'é😀' | tojson(ensure_ascii=true) }}", {"v": {"b": 1, "a": 2}}),
    ("tojson_floats", "{{ [1.0, 0.1, 1e-06, 1e16, 123456789.0, 3.14159, -2.5e-10, 1e22, 0.5] | tojson }}", {}),
    ("tojson_string_controls", "{{ s | tojson }}", {"s": "\b\f\r\u001f</script>"}),
    ("trim", "[{{ '  a b \\n ' | trim }}] [{{ 'xxaxx' | trim('x') }}] [{{ nothing | trim }}]", {}),
    ("length", "{{ 'héllo' | length }} {{ [1, 2] | length }} {{ {'a': 1} | length }} {{ nothing | length }} {{ [1, 2, 3] | count }}", {}),
    ("default", "{{ nothing | default('d') }} {{ x | default('d') }} {{ '' | default('d') }} {{ '' | default('d', true) }} {{ nothing | d('dd') }} {{ none | default('d') }}", {"x": "x"}),
    ("join", "{{ [1, 'a', none] | join }} {{ ['a', 'b'] | join(', ') }} {{ users | join(', ', attribute='name') }}", {"users": [{"name": "u1"}, {"name": "u2"}]}),
    ("case_filters", "{{ 'Hello' | upper }} {{ 'Hello' | lower }} {{ 'hELLO wORLD' | capitalize }} {{ 'hello wORLD-foo (bar' | title }} {{ 'éa' | upper }}", {}),
    ("items_list_string", "{{ d | items | list }} {{ 'ab' | list }} {{ d | list }} {{ 12 | string }} {{ [1] | string }} {{ nothing | items | list }}", {"d": {"x": 1, "y": 2}}),
    ("first_last", "{{ [1, 2, 3] | first }} {{ [1, 2, 3] | last }} {{ 'abc' | first }} {{ 'abc' | last }} [{{ [] | first }}]", {}),
    ("replace", "{{ 'aaa' | replace('a', 'b') }} {{ 'aaa' | replace('a', 'b', 2) }} {{ 'ab' | replace('', '-') }}", {}),
    ("numbers", "{{ '42' | int }} {{ '4.7' | int }} {{ 'x' | int }} {{ 'x' | int(7) }} {{ 3.9 | int }} {{ '2.5' | float }} {{ 'x' | float }} {{ 3 | float }} {{ -3 | abs }} {{ -2.5 | abs }}", {}),
    ("round", "{{ 2.5 | round }} {{ 3.5 | round }} {{ 2.675 | round(2) }} {{ 42 | round }} {{ 2.1 | round(method='ceil') }} {{ 2.9 | round(0, 'floor') }} {{ 1234.5 | round(-2) }}", {}),
    ("selectattr", "{{ l | selectattr('on') | map(attribute='n') | list }} {{ l | rejectattr('on') | map(attribute='n') | list }} {{ l | selectattr('n', 'equalto', 'b') | list | length }} {{ l | selectattr('n', '==', 'a') | map(attribute='n') | first }}", {"l": [{"n": "a", "on": True}, {"n": "b", "on": False}, {"n": "c"}]}),
    ("select_map", "{{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3] | reject('even') | list }} {{ ['a', 'b'] | map('upper') | list }} {{ l | map(attribute='x', default='d') | list }}", {"l": [{"x": 1}, {}]}),
    ("safe_indent", "{{ '<b>' | safe }} {{ 'a\\nb\\n\\nc' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent(1, blank=true) }}|{{ 'a\\nb' | indent('> ') }}", {}),
    ("sort_unique_sum", "{{ [3, 1, 2] | sort }} {{ ['b', 'A', 'c'] | sort }} {{ [3, 1, 2] | sort(reverse=true) }} {{ l | sort(attribute='k') | map(attribute='k') | list }} {{ [1, 2, 1, 3] | unique | list }} {{ [1, 2, 3] | sum }} {{ [3, 1, 2] | min }} {{ [3, 1, 2] | max }} {{ 'abc' | reverse }} {{ [1, 2] | reverse | list }}", {"l": [{"k": 2}, {"k": 1}]}),
    ("escape_wordcount", "{{ '<a href=\"x\">&\\'' | escape }} {{ 'a b  c' | wordcount }}", {}),
    # generators (map/select/unique/reverse) and dict views behave like Python's
    ("generator_truthy", "{{ 'yes' if l | selectattr('x') else 'no' }} {{ 'yes' if [] | map('upper') else 'no' }} {{ l | selectattr('x') | list | length }}", {"l": [{"x": 0}]}),
    ("dict_views_print", "{{ d.keys() }} {{ d.values() }} {{ d.items() }} {{ d.keys() | length }} {{ 'yes' if {}.items() else 'no' }}", {"d": {"a": 1, "b": [2]}}),
    ("dict_view_not_json", "{{ d.items() | tojson }}", {"d": {"a": 1}}, "not JSON serializable"),
    ("generator_no_len", "{{ [1] | map('string') | length }}", {}, "has no len()"),
    ("unsupported_generator_print", "{{ [1] | map('string') }}", {}, "unsupported construct: printing a generator"),
    ("unsupported_macro_print", "{% macro m() %}{% endmacro %}{{ m }}", {}, "unsupported construct: printing macro"),
    ("select_on_falsy", "{{ none | selectattr('x') | list }} {{ 0 | map('upper') | list }}", {}),
    ("safe_makes_string", "{% for c in true | safe %}{{ c }},{% endfor %}", {}),
    ("wordcount_word_chars", "{{ 2.5 | wordcount }} {{ 'a_b c-d é' | wordcount }}", {}),
    ("odd_even_float", "{{ 2.0 is even }} {{ 3.0 is odd }} {{ 2.5 is odd }}", {}),
    ("int_of_undefined", "{{ nothing | int }}", {}, "'nothing' is undefined"),
    ("float_of_undefined", "{{ nothing | float }}", {}, "'nothing' is undefined"),
    ("test_takes_next_name_as_arg", "{{ 1 if x is defined if true else 2 }}", {"x": 1}, "expected"),
    ("chained_is", "{{ x is defined is true }}", {"x": 1}, "chain multiple tests"),
    ("unhashable_in_dict", "{{ [1] in {'a': 1} }}", {}, "unhashable type"),
    ("tuple_list_differ", "{{ (1, 2) == [1, 2] }} {{ (1, 2) == (1, 2) }} {{ (1,) }} {{ (1, 2)[1:] }}", {}),
    ("tuple_plus_list", "{{ (1,) + [2] }}", {}, "unsupported operand type(s) for +: 'tuple' and 'list'"),
    ("test_arity", "{{ x is string not in [] }}", {"x": 1}, "takes no arguments"),
    ("test_arity_binary", "{{ x is divisibleby }}", {"x": 1}, "takes exactly one argument"),
    # scoping: assignments in a loop body last one iteration; else runs unless an iteration completed
    ("loop_body_scope_per_iteration", "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = 2 %}{% endfor %}|{% for i in [1, 2] %}[{{ y }}]{% set y = i %}{% endfor %}", {}),
    ("loop_else_after_break", "{% for i in [1, 2] %}{% break %}{% else %}E{% endfor %}|{% for i in [1, 2] %}{% if i == 1 %}{% continue %}{% endif %}{% else %}E{% endfor %}|{% for i in [1] %}{% continue %}{% else %}E{% endfor %}", {}),
    ("macro_local_set", "{% set b = 1 %}{% macro m() %}{{ b }}{% set b = 9 %}{{ b }}{% endmacro %}{{ m() }}{{ m() }}|{{ b }}", {}),
    ("macro_sees_later_set", "{% set b = 1 %}{% macro m() %}{{ b }}{% endmacro %}{% set b = 2 %}{{ m() }}", {}),
    # globals
    ("range", "{{ range(3) | list }} {{ range(1, 4) | list }} {{ range(10, 0, -3) | list }}", {}),
    ("raise_exception", "{% if true %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}", {}, "Only user and assistant roles are supported!"),
    # undefined errors (match Jinja2's default Undefined)
    ("undefined_attr_error", "{{ nothing.attr }}", {}, "'nothing' is undefined"),
    ("undefined_item_error", "{{ nothing[0] }}", {}, "'nothing' is undefined"),
    ("undefined_chain_error", "{{ d.missing.deeper }}", {"d": {}}, "has no attribute 'missing'"),
    ("undefined_add_error", "{{ 'a' + nothing }}", {}, "'nothing' is undefined"),
    ("undefined_call_error", "{{ nothing() }}", {}, "'nothing' is undefined"),
    ("type_add_error", "{{ 'a' + 1 }}", {}, "unsupported operand type(s) for +: 'str' and 'int'"),
    ("compare_type_error", "{{ 'a' < 1 }}", {}, "'<' not supported"),
    ("division_by_zero", "{{ 1 / 0 }}", {}, "division by zero"),
    ("not_iterable", "{% for x in 5 %}{% endfor %}", {}, "'int' object is not iterable"),
    ("list_append_blocked", "{% set l = [] %}{{ l.append(1) }}", {}, "unsafe"),
    ("set_attr_non_namespace", "{% set d = {} %}{% set d.x = 1 %}", {}, "non-namespace"),
    ("unpack_mismatch", "{% for a, b in [[1, 2, 3]] %}{% endfor %}", {}, "unpack"),
    ("tojson_undefined", "{{ nothing | tojson }}", {}, "not JSON serializable"),
    ("range_too_big", "{{ range(1000000) | length }}", {}, "range"),
    # syntax errors
    ("unclosed_if", "{% if true %}x", {}, "unclosed 'if' block"),
    ("unclosed_for", "{% for x in y %}x{% if true %}{% endif %}", {}, "unclosed 'for' block"),
    ("unclosed_var", "{{ x", {}, "unclosed variable tag"),
    ("unclosed_comment", "{# x", {}, "unclosed comment"),
    ("unclosed_string", "{{ 'abc }}", {}, "unterminated string"),
    ("bad_expression", "{{ 1 + }}", {}, "expected an expression"),
    ("stray_endfor", "{% endfor %}", {}, "unexpected 'endfor'"),
    ("endif_for_for", "{% for x in y %}{% endif %}", {}, "unexpected 'endif'"),
    ("unknown_tag", "{% frobnicate %}", {}, "unknown statement 'frobnicate'"),
    ("break_outside_loop", "{% break %}", {}, "outside of a for loop"),
    ("missing_in", "{% for x y %}{% endfor %}", {}, "expected 'in'"),
    ("bad_char", "{{ x ! y }}", {}, "unexpected character"),
    # unsupported constructs name themselves
    ("unsupported_include", "{% include 'x.j2' %}", {}, "unsupported construct: 'include' statement"),
    ("unsupported_extends", "{% extends 'base' %}", {}, "unsupported construct: 'extends' statement"),
    ("unsupported_call_block", "{% call m() %}x{% endcall %}", {}, "unsupported construct: 'call' statement"),
    ("unsupported_filter", "{{ 'x' | frobnicate }}", {}, "unsupported filter 'frobnicate'"),
    ("unsupported_test", "{{ 'x' is frobnicated }}", {}, "unsupported test 'frobnicated'"),
    ("unsupported_str_format", "{{ '%s' % 1 }}", {}, "unsupported construct: %-formatting"),
    ("unsupported_str_method", "{{ 'a'.zfill(3) }}", {}, "unsupported construct: str.zfill()"),
    ("unsupported_recursive", "{% for x in [] recursive %}{% endfor %}", {}, "unsupported construct: recursive"),
]


def main():
    out = []
    for case in CASES:
        name, template, variables = case[:3]
        entry = {"name": name, "template": template, "vars": variables}
        args = {"messages": [], "tools": None, "documents": None, "add_generation_prompt": False}
        args.update(variables)
        try:
            rendered = env.from_string(template).render(**args)
            # unsupported_* cases are constructs Jinja2 has and punie refuses by name.
            if len(case) > 3 and not name.startswith("unsupported_"):
                sys.exit(f"{name}: Jinja2 rendered {rendered!r} but the case expects an error")
            if len(case) > 3:
                entry["error"] = case[3]
            else:
                entry["expect"] = rendered
        except Exception as exc:  # noqa: BLE001 - any Jinja2 failure is what the case expects
            if len(case) < 4:
                sys.exit(f"{name}: Jinja2 failed: {exc!r}")
            entry["error"] = case[3]
        out.append(entry)
    with open(sys.argv[1] if len(sys.argv) > 1 else "jinja_cases.json", "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
