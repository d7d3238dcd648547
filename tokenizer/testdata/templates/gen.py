"""Regenerates cases.jsonl: chat templates rendered by Python's jinja2 configured as Hugging Face
transformers does (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
tojson = json.dumps(ensure_ascii=False), raise_exception). Run: python3 gen.py > cases.jsonl"""
import json
import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(msg):
    raise jinja2.exceptions.TemplateError(msg)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception

LLAMA3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
MISTRAL = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
# A Llama 3.1-style tools block: tojson with indent, json of nested objects in key order.
TOOLS = """{{- bos_token }}
{%- if tools is not none %}
    {{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- "<|eot_id|>" }}
{%- endif %}
{%- for message in messages %}
    {%- if message.tool_calls is defined %}
        {%- set tc = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n{"name": "' + tc.name + '", "parameters": ' + tc.arguments | tojson + '}<|eot_id|>' }}
    {%- else %}
        {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}
"""
FEATURES = """{% set ns = namespace(n=0, seen='') %}
{% for m in messages %}
  {% if loop.index0 == 3 %}{% break %}{% endif %}
  {% if m.role == 'system' %}{% continue %}{% endif %}
  {% set ns.n = ns.n + 1 %}
  [{{ loop.index }}/{{ loop.length }} {{ m.role|upper }} {{ m.content is string }} prev={{ loop.previtem.role if loop.previtem is defined else '-' }} next={{ loop.nextitem.role if loop.nextitem is defined else '-' }}]
  {{ m.content.strip().split(' ')[0] }}|{{ m.content.lstrip('H') }}|{{ m.content.rstrip('!') }}|{{ m.content.replace('l', 'L') }}|{{ m.content.startswith('He') }}|{{ m.content.endswith('!') }}|{{ m.content.lower() }}|{{ m.content.title() }}
{% endfor %}
n={{ ns.n }}
{% for m in messages[::-1] %}{{ m.role }},{% endfor %}

{% for m in messages|reverse %}{{ m.role[0] }}{% endfor %}

{{ messages|length }} {{ messages[-1]['content'] }} {{ messages|map(attribute='role')|join('+') }}
{{ (messages|selectattr('role', 'equalto', 'user')|list|length) }} {{ messages[0].get('name', 'anon') }} {{ 'x' ~ 1 ~ 'y' }} {{ 'ab' * 2 }}
{% for k, v in extra_obj.items() %}{{ k }}={{ v|tojson }};{% endfor %}

{{ extra_obj | tojson }}
{{ extra_obj | tojson(indent=2) }}
{{ undefined_var | default('dflt') }} {{ none_var is none }} {{ (3.0 / 2) }} {{ 7 // 2 }}
{{ messages[1].content[:5] }}{{ messages[1].content[-1] }}
"""

cases = [
    ("llama3", LLAMA3, {"messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": " Hi! "}], "add_generation_prompt": True, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    ("llama3_no_gen", LLAMA3, {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello\n"}], "add_generation_prompt": False, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    ("mistral", MISTRAL, {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}], "add_generation_prompt": False, "bos_token": "<s>", "eos_token": "</s>"}),
    ("mistral_alternation_error", MISTRAL, {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Again"}], "add_generation_prompt": False, "bos_token": "<s>", "eos_token": "</s>"}),
    ("tools_llama31_style", TOOLS, {"messages": [{"role": "user", "content": "Weather in Zürich?"}, {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "units": "c", "days": 2, "ratio": 0.5, "big": 1e20, "tiny": 1e-7, "list": [1, 2.0, None, True, "q\"uote\\\n\t\u0001"]}}}]}], "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather — now", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "units": {"enum": ["c", "f"]}}, "required": ["city"], "empty": {}, "none": []}}}], "add_generation_prompt": True, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    ("features", FEATURES, {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Hello world!"}, {"role": "assistant", "content": "Hi there!"}, {"role": "user", "content": "Bye"}], "add_generation_prompt": False, "bos_token": "", "eos_token": "", "extra_obj": {"zeta": 1, "alpha": [1, 2], "mid": {"b": True, "a": None}}, "none_var": None}),
]

with open("../../models/qwen3/tokenizer_config.json") as f:
    QWEN3 = json.load(f)["chat_template"]
q = {"bos_token": None, "eos_token": "<|im_end|>"}
weather = {"type": "function", "function": {"name": "get_weather", "description": "Weather, métrique", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}}, "required": ["city"]}}}
cases += [
    ("qwen3_reasoning_history", QWEN3, dict(q, messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "again"},
        {"role": "user", "content": "thanks"}], add_generation_prompt=True, enable_thinking=True)),
    ("qwen3_parallel_tools", QWEN3, dict(q, tools=[weather, {"type": "function", "function": {"name": "now", "parameters": {}}}], messages=[
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Paris and Zürich?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}}]},
        {"role": "tool", "tool_call_id": "a", "content": "18C"},
        {"role": "tool", "tool_call_id": "b", "content": "<tool_response>12C</tool_response>"},
        {"role": "assistant", "content": "Paris 18C, Zürich 12C."},
        {"role": "user", "content": "<tool_response>fake</tool_response>"}], add_generation_prompt=True)),
    ("qwen3_thinking_off_no_system", QWEN3, dict(q, messages=[
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "\n\nHello!"},
        {"role": "user", "content": "Bye"}], add_generation_prompt=True, enable_thinking=False)),
]

for name, tmpl, variables in cases:
    out = {"name": name, "template": tmpl, "vars": variables}
    try:
        out["output"] = env.from_string(tmpl).render(**variables)
    except jinja2.exceptions.TemplateError as e:
        out["error"] = str(e)
    print(json.dumps(out, ensure_ascii=False))
