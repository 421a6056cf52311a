from setuptools import find_packages, setup

setup(
    name="sqlflow_playground",
    version="0.2.0",
    description="Mutual-TLS HTTPS gateway in front of a SQLFlow playground cluster",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["sqlflow_playground", "sqlflow_playground.*"]),
    package_data={"sqlflow_playground.proto": ["*.proto"],
                  # the dashboard (handlers/ui.py): its pages, script, style and icon
                  "sqlflow_playground": ["templates/*.html", "static/*"]},
    scripts=["scripts/gen_cert.sh"],
    install_requires=[
        "tornado>=6.1",
        "sqlalchemy>=2.0",
        "pymysql>=1.0",
        "psycopg[binary]>=3.1",  # PostgreSQL state store; the wheel brings its own libpq
        "pyyaml>=5.4",
        "jsonschema>=4.0",
        "kubernetes>=28",
        "prometheus_client>=0.17",
        # SQLFlow's gRPC door (grpc_door.py); the generated modules in proto/ need at
        # least the versions that generated them (scripts/gen_proto.sh)
        "grpcio>=1.85.1",
        "protobuf>=7.35.1",
    ],
    extras_require={
        "test": [
            "cryptography>=42",
            "grpcio-tools>=1.85.1",  # tests/test_grpc_proto.py regenerates proto/
            # --event_loop uvloop is tested (tests/test_tls_sessions.py, the gRPC door)
            "uvloop>=0.17; platform_system != 'Windows'",
            # grpcio-tools pulls setuptools in; pytest-tornado 0.8 imports pkg_resources,
            # which setuptools 81 dropped
            "setuptools<81",
            "kubernetes-validate>=1.28",
            "openapi-spec-validator>=0.7",
            "ipython>=8",
            "pytest>=7",
            "pytest-tornado>=0.8",
            # tests/test_notebook.py executes a real notebook (issue 13): the kernel is this
            # venv's python; .to_dataframe() needs pandas, which the package does not
            "nbclient>=0.7",
            "nbformat>=5.7",
            "ipykernel>=6",
            "pandas>=1.5",
            # tests/test_dashboard.py drives Debian's chromium + chromium-driver (.ci/run
            # installs them)
            "selenium>=4.10",
        ],
        "bench": ["uvloop>=0.17", "fastapi>=0.100", "uvicorn[standard]>=0.23"],
        "notebook": ["ipython>=8"],
    },
    entry_points={
        "console_scripts": ["sqlflow_playground=sqlflow_playground.cli:main"],
    },
)
