#!/usr/bin/env python3
"""Writes tests/data/regex_cases.json: regular expressions and names with what Python's `re`
answers, which peft-cpp's PyRegex (include/peft/io/regex.hpp) must reproduce
(tests/io/regex_test.cpp). Needs only Python 3.11 (PEFT 0.21 runs on it):

    python3 tests/data/make_regex_cases.py

One case per line: [pattern, text, fullmatch, match, idx]: re.fullmatch / re.match as
booleans, and re.match(...).group("idx") where the pattern has that group (else null); or
[pattern] alone where Python refuses the pattern. Patterns that Python accepts but
PyRegex refuses (backreferences, lookaround, ...) are tested in regex_test.cpp by name.
"""

import json
import os
import random
import re
import sys
import warnings

warnings.simplefilter("ignore")  # FutureWarning: possible nested set
HERE = os.path.dirname(os.path.abspath(__file__))

# Written by hand: what PEFT configs hold, and Python's corner cases.
HAND = [
    r"q_proj", r"(.*\.)?(q_proj)$", r"(.*\.)?(layers\.1\..*)$", r".*\.v_proj$",
    r".*decoder.*(SelfAttention|EncDecAttention).*(q|v)$", r"model\.layers\.\d+\.self_attn\.(q|v)_proj",
    r"^model.layers.0.self_attn.q_proj", r"(.*\.)?(^q_proj)$", r"(.*\.)?($|^q_proj)$",
    r"[^.]+\.[0-9]{1,2}\.[a-z_]+", r"a{", r"a{x}", r"a{}", r"a{,}", r"a{,2}", r"a{2,}", r"a{1,2}?",
    r"{", r"a{ 1}", r"[]a]", r"[^]a]", r"[a-]", r"[-a]", r"[\d-]", r"[\w.]+", r"[^\W\d]+", r"\W+",
    r"\S+\s?\S*", r"\D+", r"\x71_proj", r"\u0071_proj", r"\U00000071_proj", r"\161_proj", r"\0",
    r"[\1]", r"[\b]", r"\n", r"a$", r"a\Z", r"\Aa", r"a$\n", r"(?:)", r"()", r"(|a)", r"a|", r"|",
    r"(?P<idx>\d+)", r"(?#comment)q_proj", r"q(?#c)*", r"(?:a*)*b", r"(a|ab)(c|bcd)(d*)",
    r"(a*)+", r"(a?){3}", r"\.", r"\-", r"\_", r"\é", r"é.", r"[é-ë]", r".", r"\\",
    # Python refuses these:
    r"*a", r"a**", r"a{2}{3}", r"^*", r"$+", r"\Z?", r"a|*", r"(", r")", r"[a", r"[]", r"[^]",
    r"[z-a]", r"[\d-z]", r"[a-\d]", r"\q", r"\x4", r"\8", r"\1", r"a{3,2}", r"(?P<1>a)",
    r"(?P<n>a)(?P<n>b)", "\\", r"(?", r"(?P", r"\400",
]
NAMES = ["", "q_proj", "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj",
         "model.layers.11.mlp.up_proj", "x.q_proj", "xq_proj", "q_proj.x", "a", "aa", "aaa",
         "ab", "abcd", "abcbcd", "a\n", "a\nb", "\n", "{", "a{", "a{}", "a{x}", "a{,}", "]",
         "-", "_", "é", "éa", "ê", "q", "\x00", "1", "12", "123", "a.b", ".", "\\",
         "decoder.block.0.layer.0.SelfAttention.q", "transformer.h.3.attn.c_attn"]

ATOMS = ["a", "b", ".", r"\.", r"\d", r"\w", r"\s", r"\D", r"[ab]", r"[^a.]", r"[a-c0-9]",
         r"[\d.]", r"[^\w]", "x", "_", "0", "1", "{", "}", r"\n", "$", "^", r"\Z", r"\A", "-",
         r"[]a]", r"[a-]", r"\x61", r"\0", r"[\W]", "q_proj", "layers"]
QUANTS = ["", "", "", "*", "+", "?", "*?", "+?", "??", "{2}", "{1,2}", "{,2}", "{2,}", "{0}",
          "{1,2}?", "{", "{x}"]
TEXTS = ["", "a", "ab", "aab", "a.b", "model.layers.0.q_proj", "x\n", "a\n", "ba", "a1", "0",
         "a b", "{", "a{2}", "_x", "abab", "a.", ".a", "layers.12.x", "b.layers.3.q_proj"]


def random_pattern(rng, depth=0):
    out = ""
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.2 and depth < 3:
            inner = random_pattern(rng, depth + 1)
            if rng.random() < 0.4:
                inner += "|" + random_pattern(rng, depth + 1)
            out += rng.choice(["(", "(?:"]) + inner + ")"
        else:
            out += rng.choice(ATOMS)
        out += rng.choice(QUANTS)
    return out


def case(pattern, text):
    try:
        compiled = re.compile(pattern)
    except (re.error, OverflowError):
        return [pattern]
    m = compiled.match(text)
    idx = None
    if m is not None and "idx" in compiled.groupindex:
        idx = m.group("idx")
    return [pattern, text, compiled.fullmatch(text) is not None, m is not None, idx]


def main():
    rng = random.Random(20260)
    cases = []
    for p in HAND:
        c = case(p, "")
        if len(c) == 1:
            cases.append(c)
            continue
        cases.extend(case(p, t) for t in NAMES)
    for _ in range(1000):
        cases.append(case(random_pattern(rng), rng.choice(TEXTS)))
    # PEFT's layer index: (?:^|.*?\.){layers_pattern}\.(?P<idx>\d+)\. and the default.
    keys = ["model.layers.1.self_attn.q_proj", "model.layers.2.mlp.layers.3.up_proj",
            "transformer.h.4.attn.c_attn", "layers.0.x.5.q", "a.b.7.c", "model.layers.x.q",
            "decoder.block.10.layer.0.SelfAttention.q", "h.07.q", "model.layers.1.experts.0.w1"]
    for lp in ["layers", "h", "layers|h", "lay.rs", "(layers)", r"layers\.0\.x|layers", "l.*",
               "block", "", "experts"]:
        for k in keys:
            cases.append(case(r"(?:^|.*?\.)" + lp + r"\.(?P<idx>\d+)\.", k))
    for k in keys:
        cases.append(case(r".*?\.[^.]*\.(?P<idx>\d+)\.", k))
    with open(os.path.join(HERE, "regex_cases.json"), "w") as out:
        out.write('{"python": "%s", "cases": [\n' % sys.version.split()[0])
        out.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in cases))
        out.write("\n]}\n")
    print(f"{len(cases)} cases")


if __name__ == "__main__":
    main()
