# Both targets set up .venv themselves (idempotent; see scripts/setup.sh).
PY := $(or $(LVAE_VENV),.venv)/bin/python

.PHONY: setup seed test test-slow seeds lab study images dims learned ica

setup:
	@scripts/setup.sh

seed: setup  ## reproduce the seed: the ELBO failure and the spread fix, with a summary
	@$(PY) -m lightning_vae.reproduce

test: setup  ## the default test suite (CI runs exactly this): 2 workers, one test file each at a time
	@$(PY) -m pytest -q -n 2 --dist loadfile

test-slow: setup  ## long learning-signal tests, incl. the 10-seed loops
	@$(PY) -m pytest -q -m slow

seeds: setup  ## both seed configs over seeds 0-9 (one vectorised ensemble each), one table
	@$(PY) -m lightning_vae sweep --config seed_elbo seed_spread --seeds 0-9 --name seeds

IMAGE_CONFIGS := $(basename $(notdir $(wildcard configs/fading_*.yaml configs/digits_*.yaml configs/sprites_*.yaml)))
LEARNED_CONFIGS := $(basename $(notdir $(wildcard configs/*_learned_spread.yaml configs/*_transform_spread.yaml)))
ICA_CONFIGS := $(basename $(notdir $(wildcard configs/ica_*.yaml)))
POINT_CONFIGS := $(filter-out $(IMAGE_CONFIGS) $(LEARNED_CONFIGS) $(ICA_CONFIGS),$(sort $(basename $(notdir $(wildcard configs/*.yaml)))))

lab: setup  ## every point-data config over seeds 0-2, one table (README: Beyond the seed; images: make images)
	@$(PY) -m lightning_vae sweep --config $(POINT_CONFIGS) --seeds 0-2 --name lab

DIMS := --grid data.manifold.init_args.ambient_dim=3,4,6,8,16 --grid data.manifold.init_args.rotation_seed=2026 --seeds 0-2 --jobs 2

dims: setup  ## circle and sphere in R^3..R^16 under a rotation no test tuned to, 3 seeds (README: Across ambient dimensions)
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config circle_spread circle_elbo sphere_spread sphere_elbo $(DIMS) --root logs/dims --name mixture
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config circle_hyper_spread sphere_hyper_spread $(DIMS) --root logs/dims --name hyper
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config circle_hyper_delta sphere_hyper_delta $(DIMS) --root logs/dims --name delta
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config circle_spread_embedded --seeds 0-2 --root logs/dims --name embedded
	@$(PY) -m lightning_vae report logs/dims/sweeps

ASCENTS := --grid model.objective.init_args.kernel.init_args.ascent=divergence,loss --seeds_as processes --jobs 2 --root logs/learned

learned: setup  ## learned spread (README: Learned spread): seed 10 seeds, circle 5, sphere 3, both ascents; FadingSquare 3; fixed-spread references
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config seed_learned_spread --seeds 0-9 $(ASCENTS) --name seed
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config circle_learned_spread --seeds 0-4 $(ASCENTS) --name circle
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config sphere_learned_spread --seeds 0-2 $(ASCENTS) --name sphere
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config fading_learned_spread --seeds 0-2 --seeds_as processes --jobs 2 --root logs/learned --name fading
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config digits_learned_spread --seeds 0-2 --seeds_as processes --jobs 2 --root logs/learned --name digits
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config digits_transform_spread --seeds 0-2 --seeds_as processes --jobs 2 --root logs/learned --name digits_transform
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config seed_spread circle_spread --seeds 0-4 --seeds_as processes --jobs 2 --root logs/learned --name fixedp
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config seed_spread circle_spread --grid model.objective.init_args.noise_std=0.05 --seeds 0-4 --root logs/learned --name floor
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config delta_transform_spread --seeds 0-4 $(ASCENTS) --name transform
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config delta_gaussian --seeds 0-4 --seeds_as processes --jobs 2 --root logs/learned --name deltafixed
	@$(PY) scripts/learned_spread_figure.py logs/learned/sweeps/seed
	@$(PY) scripts/learned_spread_directions.py logs/learned/sweeps/fading/base/seed_0
	@$(PY) scripts/learned_spread_table.py logs/learned/sweeps

study:  ## the seed study: ELBO vs spread at noise 0.1/0.3/1.0, 10 seeds each, and its report
	@scripts/reproduce_study.sh

images: setup  ## the image experiments (README: Images): 6 configs x seeds 0-2, one process each, then the table
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config fading_elbo fading_delta_gaussian fading_delta_laplace \
		digits_vae digits_delta_gaussian digits_delta_laplace --seeds 0-2 --seeds_as processes --jobs 2 --name images
	@$(PY) -m lightning_vae.image_report logs/sweeps/images

ica: setup  ## linear ICA by EM (README: Spread EM for linear ICA): error against gamma (set-up a) and against N (set-up b), tables and figures
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config ica_standard ica_spread \
		--grid data.init_args.gamma=0,0.001,0.01,0.1,0.2,0.5 --seeds 0 --jobs 2 --name ica_gamma
	@OMP_NUM_THREADS=1 $(PY) -m lightning_vae sweep --config ica_n_standard ica_n_spread \
		--grid data.init_args.n=100,300,1000,3000,10000 --seeds 0 --jobs 2 --name ica_n
	@$(PY) scripts/ica_table.py logs/sweeps/ica_gamma --by gamma --figure docs/figures/ica_gamma.png
	@$(PY) scripts/ica_table.py logs/sweeps/ica_n --by n --figure docs/figures/ica_n.png --trajectory ica/error_median
