"""Packaging hook: the Alembic migrations stay at the repository's top level (where `alembic` and
contributors use them) and ship inside the wheel as the package `gate._migrations`, which
`gate.store.migrate` finds when no checkout is around."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["gate*", "worker*"]), "gate._migrations", "gate._migrations.versions"],
    package_dir={"gate._migrations": "migrations"},
)
