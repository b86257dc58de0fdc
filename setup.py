"""Packaging for gantry: zero-downtime, progressive Docker rollouts."""
from setuptools import find_packages, setup

setup(
    name="gantry",
    version="0.1.0",
    description="Zero-downtime, progressive rollouts of Docker containers across a fleet, "
    "coordinated through etcd, with a per-host draining TCP proxy.",
    python_requires=">=3.11",
    packages=find_packages(include=["gantry", "gantry.*", "gantryd", "gantryd.*",
                                    "proxy", "proxy.*"]),
    # The web page's template, style and script (gantryd/serve/page.py).
    package_data={"gantryd.serve": ["page/*.html", "page/*.css", "page/*.js"]},
    # Classic command lines (`gantryd.py update ...`); see scripts/aliases/gantry.py.
    scripts=["scripts/aliases/gantry.py", "scripts/aliases/gantryd.py"],
    install_requires=[
        "docker>=7.0",
        # gantryd talks to etcd through its JSON gateway (the standard library); these are
        # for gRPC where the gateway cannot serve (gantryd/etcd_grpc.py, imported only then).
        # python-etcd3's generated code predates protobuf 4; gantryd.etcd_grpc selects the
        # pure-python protobuf implementation before the first import so any protobuf works.
        "etcd3==0.12.0",
        "protobuf>=3.20",
        "grpcio>=1.50",
        "twisted[tls]>=23.8",  # tls: gantryd serve --tls-cert
        "pyyaml>=6.0",
        "tabulate>=0.9",
        "prometheus-client>=0.17",
        # gantry watch: file events (a thin ctypes wrapper of Linux inotify; polling without).
        "inotify_simple>=1.3",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "pytest-timeout>=2.1", "requests>=2.28",
                 "pytest-xdist>=3.3", "ruff>=0.5", "selenium>=4.10"],
    },
    entry_points={
        "console_scripts": [
            "gantry=gantry.cli:main",
            "gantryd=gantryd.cli:entry",
            "gantry-proxy=proxy.cli:main",
        ]
    },
)
