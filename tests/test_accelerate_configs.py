"""The launch configs in accelerate_configs/: each loads with Accelerate's own loader, says one consistent thing, and
resolves through Accelerate's launcher into the settings its comments promise; the SLURM script builds the right
`accelerate launch` line on every node.

Accelerate's loader checks only top-level keys (a misspelt key under `fsdp_config` or `deepspeed_config` is silently
ignored), so the nested keys are checked here against the options `accelerate launch` knows.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import textwrap
from argparse import Namespace
from pathlib import Path
from unittest import mock

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin, PrecisionType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from conftest import free_port, requires_mpirun

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "accelerate_configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))
SBATCH = CONFIG_DIR / "slurm_multinode.sbatch"

HARDWARE_SHAPES = {
    "multi_cpu.yaml": DistributedType.MULTI_CPU,
    "single_gpu.yaml": DistributedType.NO,
    "multi_gpu_ddp.yaml": DistributedType.MULTI_GPU,
    "fsdp.yaml": DistributedType.FSDP,
    "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
    "deepspeed_zero3.yaml": DistributedType.DEEPSPEED,
    "deepspeed_zero3_offload.yaml": DistributedType.DEEPSPEED,
    "multi_node.yaml": DistributedType.MULTI_GPU,
}
# Sections whose keys Accelerate copies onto `accelerate launch` options, with the prefix it adds.
NESTED_SECTIONS = {"fsdp_config": "fsdp_", "deepspeed_config": "", "mpirun_config": "", "dynamo_config": "dynamo_"}


def config_id(path: Path) -> str:
    return path.name


def load(path: Path) -> ClusterConfig:
    return load_config_from_file(str(path))


def launcher_view(path: Path, *launch_args: str, script_args: tuple[str, ...] = ()) -> Namespace:
    """What `accelerate launch --config_file <path> <launch_args> x.py` settles on: config values merged under the
    command line, as Accelerate's launcher does before it starts any process."""
    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(path), *launch_args, "x.py", *script_args])
    args, _, _ = _validate_launch_command(args)
    return args


def test_every_hardware_shape_has_its_config():
    assert {path.name for path in CONFIG_FILES} >= set(HARDWARE_SHAPES)
    for name, distributed_type in HARDWARE_SHAPES.items():
        assert load(CONFIG_DIR / name).distributed_type == distributed_type, name


@pytest.mark.parametrize("path", CONFIG_FILES, ids=config_id)
def test_loads_with_accelerates_own_loader(path: Path):
    config = load(path)  # raises on unknown top-level keys and unknown distributed types
    assert isinstance(config, ClusterConfig)
    assert config.compute_environment.value == "LOCAL_MACHINE"
    assert ClusterConfig.from_yaml_file(str(path)).to_dict() == config.to_dict()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=config_id)
def test_nested_keys_are_options_accelerate_launch_knows(path: Path):
    known_options = {action.dest for action in launch_command_parser()._actions}
    config = load(path)
    for section, prefix in NESTED_SECTIONS.items():
        for key in getattr(config, section) or {}:
            option = key if key.startswith(prefix) else prefix + key
            assert option in known_options, f"{path.name}: {section}.{key} is not an `accelerate launch` option"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=config_id)
def test_num_processes_agrees_with_distributed_type(path: Path):
    config = load(path)
    processes, machines = config.num_processes, config.num_machines
    assert machines >= 1 and processes % machines == 0, f"{path.name}: {processes} processes over {machines} machines"
    if config.distributed_type == DistributedType.NO:
        assert (processes, machines) == (1, 1), f"{path.name}: distributed_type NO runs exactly one process"
    elif config.distributed_type in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU, DistributedType.FSDP):
        assert processes >= 2, f"{path.name}: {config.distributed_type.value} needs 2 or more processes"
    else:
        assert config.distributed_type == DistributedType.DEEPSPEED and processes >= 1
    assert 0 <= config.machine_rank < machines


@pytest.mark.parametrize("path", CONFIG_FILES, ids=config_id)
def test_mixed_precision_is_a_value_accelerate_accepts(path: Path):
    precision = load(path).mixed_precision
    # An unquoted `no` in YAML is the boolean False, not the string "no".
    assert isinstance(precision, str) and precision in PrecisionType.list(), f"{path.name}: {precision!r}"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=config_id)
def test_cpu_settings_only_in_the_cpu_config(path: Path):
    """`use_cpu` with a GPU engine does not give CPU FSDP/DDP: the processes start but never join one group."""
    config = load(path)
    is_cpu = config.distributed_type == DistributedType.MULTI_CPU
    assert config.use_cpu == is_cpu, f"{path.name}: use_cpu={config.use_cpu} with {config.distributed_type.value}"
    if is_cpu:
        assert config.mixed_precision == "no"  # bf16 is emulated (slow) on most CPUs


@pytest.mark.parametrize("path", CONFIG_FILES, ids=config_id)
def test_launcher_keeps_the_configured_shape(path: Path):
    config = load(path)
    args = launcher_view(path)
    assert (args.num_processes, args.num_machines) == (config.num_processes, config.num_machines)
    assert args.mixed_precision == config.mixed_precision
    assert args.multi_gpu == (config.distributed_type == DistributedType.MULTI_GPU)
    assert args.use_fsdp == (config.distributed_type == DistributedType.FSDP)
    assert args.use_deepspeed == (config.distributed_type == DistributedType.DEEPSPEED)


def test_multi_cpu_starts_its_processes_through_mpirun():
    """Without an MPI hostfile, Accelerate starts a single process for MULTI_CPU whatever num_processes says."""
    config = load(CONFIG_DIR / "multi_cpu.yaml")
    hostfile = ROOT / config.mpirun_config["mpirun_hostfile"]
    slots = sum(int(match) for match in re.findall(r"slots=(\d+)", hostfile.read_text()))
    assert slots >= config.num_processes
    assert launcher_view(CONFIG_DIR / "multi_cpu.yaml").mpirun_hostfile == config.mpirun_config["mpirun_hostfile"]


def test_fsdp_config_is_fsdp2_with_transformer_block_wrap_and_sharded_checkpoints():
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    env = prepare_multi_gpu_env(launcher_view(CONFIG_DIR / "fsdp.yaml"))  # the environment each process gets
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    models_and_blocks = [
        (LlamaForCausalLM(LlamaConfig(vocab_size=64, num_key_value_heads=4, **tiny)), "LlamaDecoderLayer"),
        (BertForSequenceClassification(BertConfig(vocab_size=64, **tiny)), "BertLayer"),
    ]
    for model, block in models_and_blocks:
        with mock.patch.dict(os.environ, env, clear=True):
            plugin = FullyShardedDataParallelPlugin()  # reads the launcher's environment, as in a real run
        assert plugin.fsdp_version == 2
        assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
        assert plugin.cpu_ram_efficient_loading
        plugin.set_auto_wrap_policy(model)  # no class named in the YAML: taken from the model's _no_split_modules
        assert block in plugin.transformer_cls_names_to_wrap
        wrapped = {cls.__name__ for cls in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]}
        assert wrapped == set(model._no_split_modules)


@pytest.mark.parametrize(
    ("name", "stage", "offload", "gathers_16bit_weights"),
    [
        ("deepspeed_zero2.yaml", 2, "none", False),
        ("deepspeed_zero3.yaml", 3, "none", True),
        ("deepspeed_zero3_offload.yaml", 3, "cpu", True),
    ],
)
def test_deepspeed_configs_are_the_zero_stages_they_are_named(name, stage, offload, gathers_16bit_weights):
    args = launcher_view(CONFIG_DIR / name)
    args.deepspeed_fields_from_accelerate_config = ",".join(load(CONFIG_DIR / name).deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    with mock.patch.dict(os.environ, env, clear=True):
        ds_config = DeepSpeedPlugin().deepspeed_config  # built from the launcher's environment; needs no deepspeed
    zero = ds_config["zero_optimization"]
    assert zero["stage"] == stage
    assert zero["offload_optimizer"]["device"] == offload and zero["offload_param"]["device"] == offload
    assert zero["stage3_gather_16bit_weights_on_model_save"] is gathers_16bit_weights  # consolidated export
    # Left to the recipe: a number here would override the recipe's accumulation and batch size.
    assert ds_config["gradient_accumulation_steps"] == "auto"
    assert ds_config["train_micro_batch_size_per_gpu"] == "auto"


def test_paths_named_in_the_comments_exist():
    for path in [*CONFIG_FILES, SBATCH]:
        named = re.findall(r"(?:recipes|accelerate_configs)/[\w./-]+\.(?:py|yaml|sbatch)", path.read_text())
        for name in named:
            assert (ROOT / name).is_file(), f"{path.name} names {name}, which does not exist"


# --- SLURM ----------------------------------------------------------------------------------------------------------

FAKE_TOOLS = {
    # srun: record its arguments, then run the command after its options as the task on node FAKE_NODE_ID, with
    # SLURM_NODEID set for that task as real srun does (the batch script itself always runs on node 0).
    "srun": """
        printf '%s\\n' "$@" > "$FAKE_LOG/srun.args"
        while [ "$#" -gt 0 ] && [ "${1#--}" != "$1" ]; do shift; done
        SLURM_NODEID="$FAKE_NODE_ID" exec "$@"
    """,
    "scontrol": """
        printf '%s\\n' "$@" > "$FAKE_LOG/scontrol.args"
        [ "$1 $2" = "show hostnames" ] && printf 'gpu-07\\ngpu-08\\n'
    """,
    "accelerate": """
        printf '%s\\n' "$@" > "$FAKE_LOG/accelerate.args"
    """,
}


def run_sbatch_with_fake_slurm(tmp_path: Path, node_id: int, *recipe_args: str) -> dict[str, list[str]]:
    """Run the batch script of a 2-node job, with stand-ins for srun, scontrol and accelerate; srun's task runs as
    node `node_id`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool, body in FAKE_TOOLS.items():
        script = bin_dir / tool
        script.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    for key in ("RECIPE", "RECIPE_CONFIG", "ACCELERATE_CONFIG", "GPUS_PER_NODE", "MAIN_PROCESS_PORT"):
        env.pop(key, None)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        FAKE_LOG=str(tmp_path),
        SLURM_NNODES="2",
        SLURM_NODEID="0",
        FAKE_NODE_ID=str(node_id),
        SLURM_JOB_NODELIST="gpu-[07-08]",
        SLURM_GPUS_ON_NODE="8",
        SLURM_SUBMIT_DIR=str(ROOT),
    )
    subprocess.run(["bash", str(SBATCH), *recipe_args], env=env, check=True, capture_output=True, text=True)
    return {tool: (tmp_path / f"{tool}.args").read_text().splitlines() for tool in FAKE_TOOLS}


def test_sbatch_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)


def test_sbatch_runs_one_accelerate_launch_per_node_with_slurm_rendezvous(tmp_path: Path):
    calls = run_sbatch_with_fake_slurm(tmp_path, 1, "--max_steps", "5")
    assert calls["scontrol"] == ["show", "hostnames", "gpu-[07-08]"]
    assert "--ntasks-per-node=1" in calls["srun"] and "--nodes=2" in calls["srun"]
    assert calls["accelerate"] == [
        "launch",
        "--config_file", "accelerate_configs/multi_node.yaml",
        "--num_machines", "2",
        "--num_processes", "16",
        "--machine_rank", "1",
        "--main_process_ip", "gpu-07",
        "--main_process_port", "29500",
        "recipes/pretrain.py", "--config", "recipes/configs/pretrain_125m.yaml", "--max_steps", "5",
    ]  # fmt: skip
    assert run_sbatch_with_fake_slurm(tmp_path, 0)["accelerate"][8] == "0"  # --machine_rank on the first node


def test_slurm_command_line_overrides_the_multi_node_placeholders(tmp_path: Path):
    launch_args = run_sbatch_with_fake_slurm(tmp_path, 1)["accelerate"][1:]
    config_path = ROOT / launch_args[launch_args.index("--config_file") + 1]
    script_at = launch_args.index("recipes/pretrain.py")
    args = launcher_view(config_path, *launch_args[2:script_at], script_args=tuple(launch_args[script_at + 1 :]))
    assert (args.num_machines, args.num_processes, int(args.machine_rank)) == (2, 16, 1)
    assert (args.main_process_ip, int(args.main_process_port)) == ("gpu-07", 29500)
    assert args.multi_gpu and args.training_script_args == ["--config", "recipes/configs/pretrain_125m.yaml"]


# --- a real launch ---------------------------------------------------------------------------------------------------

PROBE = """
import torch
import torch.distributed as dist
from accelerate import Accelerator

accelerator = Accelerator()
ranks = accelerator.gather(torch.tensor([accelerator.process_index])).tolist()
print(f"PROBE {accelerator.distributed_type.value} {accelerator.process_index}/{accelerator.num_processes} "
      f"{dist.get_backend()} {sorted(ranks)}", flush=True)
"""


@pytest.mark.slow
@requires_mpirun
def test_multi_cpu_config_starts_two_processes_in_one_gloo_group(tmp_path: Path):
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(PROBE))
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/multi_cpu.yaml",
        "--main_process_port", str(free_port()), str(probe),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("PROBE"))
    assert lines == ["PROBE MULTI_CPU 0/2 gloo [0, 1]", "PROBE MULTI_CPU 1/2 gloo [0, 1]"]
