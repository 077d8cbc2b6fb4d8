"""The configs of the demo's three kinds of fit, built in code: the shipped GeoWorld recipes
(`configs/{retrieval,sft,grpo}/geoworld_tiny.yaml`) at the demo's sizes, with its seed and its folders.

Built here rather than read from `configs/` so an installed geor1 (not a checkout) runs the demo; a test holds these
to the shipped recipes, setting by setting, so the two cannot drift apart. Every component is named by its
`class_path`, as in a YAML; the pipeline writes each config to `<out>/configs/<stage>.yaml` and fits that file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geor1.demo.config import DemoConfig, DemoPaths

MAX_PIXELS = 12544  # 28*28*16: at most 16 tokens per image
RETRIEVAL_BATCH = 64


def component(class_path: str, **init_args: Any) -> dict[str, Any]:
    """`{"class_path": ..., "init_args": {...}}`, as LightningCLI reads a component."""
    return {"class_path": class_path, "init_args": init_args} if init_args else {"class_path": class_path}


def trainer(root: Path, checkpoint: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """Trainer settings with the callbacks every recipe has (data health; checkpoints under `root/checkpoints`,
    `last.ckpt` kept; a checkpoint on SIGTERM) and TensorBoard logs under `root/tb`."""
    return {
        **settings,
        "default_root_dir": str(root),
        "callbacks": [
            component("geor1.data.health.DataHealth"),
            component("lightning.pytorch.callbacks.ModelCheckpoint", dirpath=str(root / "checkpoints"), **checkpoint),
            component("geor1.objectives.callbacks.CheckpointOnSigterm"),
        ],
        "logger": component("geor1.objectives.runs.RunLogger", save_dir=str(root)),
    }


def retrieval(cfg: DemoConfig, paths: DemoPaths) -> dict[str, Any]:
    """The cross-view encoder (configs/retrieval/geoworld_tiny.yaml) on the demo's GeoWorld."""
    root = paths.stage("retrieval")
    return {
        "seed_everything": cfg.seed,
        "trainer": trainer(
            root,
            {"filename": "{epoch}-{step}", "monitor": "val/recall@1", "mode": "max", "save_last": True},
            accelerator="auto",
            devices=1,
            max_epochs=cfg.retrieval_epochs,
            log_every_n_steps=10,
        ),
        "model": component(
            "geor1.objectives.ContrastiveModule",
            backbone="regnetx_002",
            embed_dim=128,
            shared=False,
            temperature=0.07,
            optimizer=component("torch.optim.AdamW", lr=0.002, weight_decay=0.01),
            scheduler=component(
                "torch.optim.lr_scheduler.CosineAnnealingLR",
                T_max=max(1, cfg.retrieval_epochs * cfg.num_train // RETRIEVAL_BATCH),
            ),
        ),
        "data": component(
            "geor1.data.PairShardDataModule",
            root=str(paths.world),
            item="tensors",
            ground_size=[cfg.retrieval_image, round(cfg.retrieval_image * 1.5)],
            sat_size=cfg.retrieval_image,
            batch_size=RETRIEVAL_BATCH,
            num_workers=0,
            shuffle_buffer=1000,
        ),
    }


def _sft(
    cfg: DemoConfig,
    paths: DemoPaths,
    stage: str,
    policy: dict[str, Any],
    steps: int,
    roots: list[str],
    weights: list[int] | None,
) -> dict[str, Any]:
    """The SFT recipe (configs/sft/geoworld_tiny.yaml) for `steps` steps on `roots` from `policy`, exporting to
    `paths.model(stage)`."""
    root = paths.stage(stage)
    return {
        "seed_everything": cfg.seed,
        "trainer": trainer(
            root,
            {"every_n_train_steps": 300, "save_last": True},
            accelerator="cpu",
            devices=1,
            max_steps=steps,
            val_check_interval=max(1, steps // 3),
            limit_val_batches=4,
            log_every_n_steps=10,
            gradient_clip_val=1.0,
        ),
        "model": component(
            "geor1.objectives.SFTModule",
            policy=policy,
            optimizer=component("torch.optim.AdamW", lr=0.003, weight_decay=0.0),
            scheduler=component("torch.optim.lr_scheduler.OneCycleLR", max_lr=0.003, total_steps=steps, pct_start=0.1),
            max_length=768,
            num_val_generations=8,
            max_new_tokens=cfg.max_new_tokens,
            export_dir=str(paths.model(stage)),
        ),
        "data": component(
            "geor1.data.ChatShardDataModule",
            roots=roots,
            batch_size=8,
            shuffle_buffer=500,
            resampled=True,
            samples_per_epoch=800,
            root_weights=weights,
        ),
    }


def instruct(cfg: DemoConfig, paths: DemoPaths) -> dict[str, Any]:
    """The instruction-following base: the SFT recipe on the generic describe questions (`geor1.data.instruct`),
    from the untrained tiny policy; exports to `paths.base_model`. Stands in for the instruction tuning of the
    paper's base model (Qwen2.5-VL-7B-Instruct): the answer format and describing images, nothing geospatial."""
    policy = component("geor1.model.TinyPolicy", seed=cfg.seed, max_pixels=MAX_PIXELS)
    return _sft(cfg, paths, "base", policy, cfg.instruct_steps, [str(paths.instruct)], None)


def sft(cfg: DemoConfig, paths: DemoPaths) -> dict[str, Any]:
    """Scaffolding (configs/sft/geoworld_tiny.yaml): the base on the fact-checked pairing traces and geolocation
    traces (`sft_pairing_weight` : `sft_geolocate_weight` shards; pairing only with weight 0); exports to
    `paths.model("sft")`."""
    policy = component("geor1.model.Policy", path=str(paths.base_model), max_pixels=MAX_PIXELS)
    if cfg.sft_geolocate_weight:
        roots = [str(paths.sft_pairing), str(paths.sft_geolocate)]
        weights: list[int] | None = [cfg.sft_pairing_weight, cfg.sft_geolocate_weight]
    else:
        roots, weights = [str(paths.sft_pairing)], None
    return _sft(cfg, paths, "sft", policy, cfg.sft_steps, roots, weights)


def grpo_settings(cfg: DemoConfig) -> dict[str, Any]:
    """GRPOModule's settings in the demo: configs/grpo/geoworld_tiny.yaml's, with the demo's group size and
    completion length. The one place that names GRPOModule's arguments (`rollout` and `loss`:
    geor1.objectives.grpo_settings): follow them here when they change."""
    return {
        "rewards": {"accuracy": 1.0, "format": 0.5, "length": 0.5, "repetition": 0.5},
        "reward_kwargs": {"length": {"max_len": cfg.max_new_tokens}},
        "rollout": {
            "group_size": cfg.group_size,
            "max_new_tokens": cfg.max_new_tokens,
            "temperature": 1.0,
            "top_p": 1.0,
            "share_prefix": True,
            "dynamic_sampling": False,
            "max_dynamic_batches": 8,
        },
        "loss": {
            "beta": 0.04,
            "kl_estimator": "k3",
            "epsilon": 0.2,
            "aggregation": "grpo",
            "importance_level": "token",
            "mu": 1,
            "max_grad_norm": 1.0,
        },
        "log_completions_every_n_steps": 25,
    }


def grpo(cfg: DemoConfig, paths: DemoPaths, stage: str, init: Path, steps: int, lr: float) -> dict[str, Any]:
    """Elevating (configs/grpo/geoworld_tiny.yaml) on the mined pairing episodes, from the model folder `init` (the
    SFT model for "SFT+GRPO", the base for "Zero"); `steps` optimizer steps at learning rate `lr`; exports to
    `paths.model(stage)`."""
    root = paths.stage(stage)
    policy = component("geor1.model.Policy", path=str(init), max_pixels=MAX_PIXELS)
    return {
        "seed_everything": cfg.seed,
        "trainer": trainer(
            root,
            {"every_n_train_steps": 100, "save_last": True},
            accelerator="cpu",
            devices=1,
            max_steps=steps,
            val_check_interval=max(1, steps // 3),
            limit_val_batches=8,
            log_every_n_steps=1,
        ),
        "model": component(
            "geor1.objectives.GRPOModule",
            policy=policy,
            optimizer=component("torch.optim.AdamW", lr=lr, weight_decay=0.0),
            **grpo_settings(cfg),
            export_dir=str(paths.model(stage)),
        ),
        "data": component(
            "geor1.data.ChatShardDataModule",
            roots=str(paths.episodes),
            task="pairing",
            batch_size=cfg.grpo_prompts,
            shuffle_buffer=500,
        ),
    }
