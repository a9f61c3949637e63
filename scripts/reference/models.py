"""One entry point for every family of the reference: load_model(path) reads a GGUF file or a
Hugging Face directory and returns a model with .cfg (vocab_size, d_model, n_head, d_ff,
bos_token_id, eos_token_id, ...), .forward(tokens) -> float64 logits, .n_params(), .decode(ids).

  GGUF `llama`, HF llama / mistral / qwen2   -> llama.LlamaModel
  HF opt (OPTForCausalLM)                    -> opt.OPTModel
  HF mpt (MptForCausalLM)                    -> mpt.MPTModel
"""

import os

from common import ModelError, read_hf_config
from gguf_reader import GGUFError
import llama
import mpt
import opt

_HF_FAMILIES = {"llama": llama.LlamaModel, "mistral": llama.LlamaModel,
                "qwen2": llama.LlamaModel, "opt": opt.OPTModel, "mpt": mpt.MPTModel}


def load_model(path):
    try:
        if os.path.isdir(path) or path.endswith(".safetensors"):
            d = path if os.path.isdir(path) else os.path.dirname(path) or "."
            mtype = read_hf_config(d).get("model_type")
            if mtype not in _HF_FAMILIES:
                raise ModelError("%s: model_type %r is not supported by this reference "
                                 "(supported: %s)" % (d, mtype, ", ".join(sorted(_HF_FAMILIES))))
            return _HF_FAMILIES[mtype](d)
        return llama.LlamaModel(path)
    except GGUFError as e:
        raise ModelError(str(e))
