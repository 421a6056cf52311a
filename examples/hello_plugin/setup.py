from setuptools import setup

setup(
    name="sqlflow_playground_hello",
    version="0.1.0",
    description="An example third-party task type for sqlflow-playground",
    packages=["sqlflow_playground_hello"],
    install_requires=["sqlflow_playground"],
    entry_points={"sqlflow_playground.plugins": ["hello = sqlflow_playground_hello:HelloPlugin"]},
)
