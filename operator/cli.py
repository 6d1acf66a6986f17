"""`faultlab`: the user's command — local clusters, chaos experiments, the demo, the operator."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import click


def package_version() -> str:
    try:
        return version("faultlab")
    except PackageNotFoundError:
        return "0+unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version(), prog_name="faultlab")
def cli() -> None:
    """faultlab runs replicated systems (Raft, CRDT stores, event stores, collaborative docs)
    and breaks them on purpose, with checked verdicts: linearizable? converged? writes lost?"""


@cli.command("version")
def version_cmd() -> None:
    """Print faultlab's version and the versions of its wire contracts."""
    click.echo(f"faultlab {package_version()}")
    click.echo("protocols: faultlab.raft.v1, faultlab.agent.v1")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
