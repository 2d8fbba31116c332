"""Every MoE model type of the installed transformers, and its sparse MoE block built from a config with random
weights, so a user can time their own model's MoE block under every experts implementation.

    for mt in discover():                               # one MoEModelType per MoE model_type, by inspection
        ...
    config = tiny_config("deepseek_v3")                 # or default_config("path/to/config.json") for real sizes
    block = build_block(config, "cuda", torch.bfloat16, seed=0)
    set_experts_implementation(block, "grouped_mm")
    y_TD = block_forward(block, x_TD)

modeling.py finds a modeling module's experts and block classes, configs.py reads and shrinks configs, blocks.py
builds and runs a block, implementations.py switches its experts implementation, discovery.py lists the types.
transformers is imported inside the functions, never at module import, so `import moe_impls` stays fast and works
without it. Shapes: T tokens, D the block's hidden size.
"""

from moe_impls.hf_models.blocks import block_class_for, block_forward, build_block
from moe_impls.hf_models.configs import (
    TINY_EXPERTS,
    TINY_FFN,
    TINY_GROUPS,
    TINY_HEAD_DIM,
    TINY_HEADS,
    TINY_HIDDEN,
    TINY_RANK,
    TINY_TOP_K,
    default_config,
    moe_config,
    moe_layer_index,
    tiny_config,
)
from moe_impls.hf_models.discovery import MoEModelType, discover, one_thread
from moe_impls.hf_models.implementations import (
    OURS,
    BlockRun,
    experts_modules,
    implementation_names,
    needs_gpu_kernel,
    register_ours,
    run_block,
    set_experts_implementation,
)
from moe_impls.hf_models.modeling import DECORATOR, is_experts_class

__all__ = [
    "DECORATOR",
    "OURS",
    "TINY_EXPERTS",
    "TINY_FFN",
    "TINY_GROUPS",
    "TINY_HEADS",
    "TINY_HEAD_DIM",
    "TINY_HIDDEN",
    "TINY_RANK",
    "TINY_TOP_K",
    "BlockRun",
    "MoEModelType",
    "block_class_for",
    "block_forward",
    "build_block",
    "default_config",
    "discover",
    "experts_modules",
    "implementation_names",
    "is_experts_class",
    "moe_config",
    "moe_layer_index",
    "needs_gpu_kernel",
    "one_thread",
    "register_ours",
    "run_block",
    "set_experts_implementation",
    "tiny_config",
]
