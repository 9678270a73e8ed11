"""BitGen: a tiny 1.58-bit (BitNet b1.58) vision-language model for edge devices

Modules:

- `bitgen.cli`: The four console scripts `bitgen-train`, `bitgen-eval`, `bitgen-export` and `bitgen-embed`: parsers that answer `--help` at once, one-line errors, and the same flags everywhere.
- `bitgen.data`: MS-COCO-format captions that survive bad files, GPT-2 tokens with dynamic padding, fastai `DataLoaders`, retrieval loaders, and an embedded captioned-shapes dataset for demos and tests.
- `bitgen.decoder`: A causal BitNet decoder with cross-attention to a context (fused image tokens and memory read-out), an LM head tied to the token embedding, and greedy generation.
- `bitgen.encoder`: BitNet b1.58 attention and feed-forward layers with SubLN, pre-norm blocks with a cross-attention hook, and the bidirectional text encoder whose CLS row is the pooled text vector.
- `bitgen.eval`: Image-text retrieval Recall@K over a whole split (every caption of every image), its chance level, two figures, and the `bitgen-eval` command.
- `bitgen.export`: One packed safetensors file per model: ternary weights at 1.6 or 2 bits, the rest in fp16 (token embedding optionally int8), a lean CPU loader that runs inference from that file alone, ONNX graphs for runtimes without PyTorch, size reports, latency, and two command-line tools.
- `bitgen.fusion`: Fusion in the backbone: gated cross-attention between the top text blocks and image-side blocks, off for contrast, on for matching, and identical to the unimodal model at initialisation.
- `bitgen.memory`: Generative parametric memory (GPM): write an episode into K slots by least squares, read it back through noisy addresses, and the memory's negative ELBO: how well the read-out reconstructs the episode, plus the address KL.
- `bitgen.vision`: DINOv2 from Hugging Face or a torchvision CNN, fed `ToTensor()` images in [0, 1]: ImageNet normalisation inside the model (exactly once), CLS + patch tokens, and a full-precision projection to the text model's width."""

__version__ = "0.0.1"

def _docs_strip_main(cell):
    """nbdev doc processor (`doc_procs` in pyproject.toml): drop the `__main__.` prefix from rendered `show_doc` signatures.

    The docs run each notebook's cells in `__main__`, so a class the notebook defines (e.g. `PackedBitLinear`) has
    `__module__ == '__main__'`, and fastcore's signature formatter (`inspect.formatannotation`) writes its annotations as
    `__main__.PackedBitLinear`."""
    for o in getattr(cell, 'outputs', None) or []:
        data = o.get('data') or {}
        for k, v in data.items():
            if isinstance(v, str): data[k] = v.replace('__main__.', '')
            elif isinstance(v, list): data[k] = [s.replace('__main__.', '') if isinstance(s, str) else s for s in v]
