#!/usr/bin/env python3
"""Renders chat-template cases with Jinja2 configured exactly as Hugging Face transformers does
(transformers/utils/chat_template_utils.py: ImmutableSandboxedEnvironment, trim_blocks,
lstrip_blocks, the loopcontrols extension, the `generation` tag, `raise_exception` and
`strftime_now` globals, a `tojson` filter that keeps non-ASCII text and key order).

Usage: jinja2_render.py CASES.json RESULTS.json
CASES.json is {"now": EPOCH_SECONDS, "cases": [{"template": str, "context": {...}}, ...]};
RESULTS.json gets one {"text": str} or {"error": str} per case, in order. `now` fixes the clock
strftime_now reads, so both renderers see the same date.
"""
import json
import sys
from datetime import datetime, timezone

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class AssistantTracker(Extension):
    # transformers marks assistant text with {% generation %}...{% endgeneration %}; rendering
    # only outputs the body.
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_environment(now):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.fromtimestamp(now, timezone.utc).strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main():
    sys.setrecursionlimit(3000)
    with open(sys.argv[1], encoding="utf-8") as f:
        request = json.load(f)
    env = make_environment(request.get("now", 0))
    results = []
    compiled = {}
    for case in request["cases"]:
        source = case["template"]
        try:
            if source not in compiled:
                compiled[source] = env.from_string(source)
            results.append({"text": compiled[source].render(**case["context"])})
        except Exception as e:  # any exception is "Jinja2 raises": dsv3 must raise too
            results.append({"error": f"{type(e).__name__}: {e}"[:500]})
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(results, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
