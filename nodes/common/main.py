"""`faultlab-node <kind> ...`: the command every node pod runs.

Every flag can also come from a `FAULTLAB_<FLAG>` environment variable
(`--data-dir` <- `FAULTLAB_DATA_DIR`), which is how pods set them.

The agent token is a secret: pass it as `FAULTLAB_AGENT_TOKEN` or in a file named by
`--agent-token-file`, never as `--agent-token` on a shared host, where every local user
reads command lines through `ps` and /proc/PID/cmdline.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from pathlib import Path

from faultlab.nodes.common.node import NodeContext, env_default
from faultlab.nodes.common.resolver import parse_peers

# kind -> module exposing `async def serve(ctx: NodeContext) -> None` and optionally
# `add_arguments(parser)`.
KINDS = {
    "raft": "faultlab.nodes.raft.node",
    "echo": "faultlab.nodes.agent.testing",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faultlab-node", description="Run one faultlab node process.")
    sub = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, module_name in KINDS.items():
        p = sub.add_parser(kind, help=f"run a {kind} node")
        p.add_argument("--id", default=env_default("id"), help="this member's id (FAULTLAB_ID)")
        p.add_argument("--listen", default=env_default("listen", "127.0.0.1:7000"),
                       help="host:port to serve gRPC on (FAULTLAB_LISTEN)")
        p.add_argument("--advertise", default=env_default("advertise"),
                       help="host:port peers and clients dial; defaults to --listen (FAULTLAB_ADVERTISE)")
        p.add_argument("--peers", default=env_default("peers"),
                       help="initial members, id=host:port,... including this one (FAULTLAB_PEERS)")
        p.add_argument("--data-dir", default=env_default("data_dir"), help="durable state (FAULTLAB_DATA_DIR)")
        p.add_argument("--metrics-listen", default=env_default("metrics_listen"),
                       help="host:port for Prometheus metrics; empty disables (FAULTLAB_METRICS_LISTEN)")
        p.add_argument("--agent-listen", default=env_default("agent_listen"),
                       help="host:port to serve the fault agent (and gRPC health) on, apart from the data "
                            "services, so a NetworkPolicy can admit only the operator there; empty serves it "
                            "on --listen (FAULTLAB_AGENT_LISTEN)")
        p.add_argument("--agent-token", default=env_default("agent_token"),
                       help="token the fault agent requires; empty disables the agent (FAULTLAB_AGENT_TOKEN; "
                            "on the command line it is visible to every local user)")
        p.add_argument("--agent-token-file", default=env_default("agent_token_file"),
                       help="read the agent token from this file instead (FAULTLAB_AGENT_TOKEN_FILE)")
        p.add_argument("--disk-fill-floor", default=env_default("disk_fill_floor", "auto"),
                       help="free space the agent's diskFill ballast never takes the filesystem below: auto "
                            "(1 GiB or 5%%, the larger), 0 on a volume of the member's own, a size (2GiB) or "
                            "a percentage (10%%) (FAULTLAB_DISK_FILL_FLOOR)")
        p.add_argument("--log-level", default=env_default("log_level", "INFO"))
        module = importlib.import_module(module_name)
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.id:
        sys.exit("faultlab-node: --id (or FAULTLAB_ID) is required")
    if not args.data_dir:
        sys.exit("faultlab-node: --data-dir (or FAULTLAB_DATA_DIR) is required")
    try:
        peers = parse_peers(args.peers)
    except ValueError as exc:
        sys.exit(f"faultlab-node: {exc}")
    token = agent_token(args.agent_token, args.agent_token_file)
    problem = agent_listen_problem(args.agent_listen, args.listen)
    if problem:
        sys.exit(f"faultlab-node: --agent-listen {args.agent_listen}: {problem}")
    from faultlab.nodes.agent.resources import DiskFloor

    try:
        DiskFloor.parse(args.disk_fill_floor)
    except ValueError as exc:
        sys.exit(f"faultlab-node: --disk-fill-floor: {exc}")
    known = {"kind", "id", "listen", "advertise", "peers", "data_dir", "metrics_listen", "agent_listen",
             "agent_token", "agent_token_file", "disk_fill_floor", "log_level"}
    options = {k: v for k, v in vars(args).items() if k not in known}
    module = importlib.import_module(KINDS[args.kind])

    async def run() -> None:
        ctx = NodeContext(kind=args.kind, node_id=args.id, listen=args.listen, advertise=args.advertise,
                          peers=peers, data_dir=Path(args.data_dir), agent_token=token,
                          disk_fill_floor=args.disk_fill_floor, metrics_listen=args.metrics_listen,
                          agent_listen=args.agent_listen, options=options)
        await module.serve(ctx)

    _install_fast_loop()
    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        if not (isinstance(exc, SystemExit) and exc.code in (0, None)):
            _heal_data_faults(Path(args.data_dir), exc)
        raise


def _heal_data_faults(data_dir: Path, exc: BaseException) -> None:
    """A node that stops on an error (a refused start on corrupted state) ends the data faults it was
    started on: with no node running, their original bytes go back, so the next start is clean and no
    fault outlives the agent that injected it."""
    from faultlab.nodes.agent.resources import heal_leftover_corruption

    how = f"exit code {exc.code}" if isinstance(exc, SystemExit) else type(exc).__name__
    try:
        notes = heal_leftover_corruption(data_dir)
    except OSError as err:
        notes = [f"could not undo corruption faults in {data_dir}: {err}"]
    for note in notes:
        logging.getLogger("faultlab.agent").warning("the node stopped (%s) on data a fault corrupted; %s; "
                                                    "its next start reads the original bytes", how, note)


def agent_listen_problem(agent_listen: str, listen: str) -> str:
    """What is wrong with --agent-listen next to --listen ('' when nothing is)."""
    if not agent_listen:
        return ""
    _, sep, port = agent_listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return "give host:port (e.g. 0.0.0.0:7001)"
    if port == listen.rpartition(":")[2]:
        return (f"the agent needs a port of its own, not --listen's ({listen}); pick another port, or leave "
                f"--agent-listen out to serve the agent on --listen")
    return ""


def agent_token(token: str, token_file: str) -> str:
    """The agent token from --agent-token or --agent-token-file (exits with a message on a bad file)."""
    if token and token_file:
        sys.exit("faultlab-node: give --agent-token or --agent-token-file (or their FAULTLAB_ variables), not both")
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            sys.exit(f"faultlab-node: --agent-token-file {token_file}: cannot read it ({exc.strerror})")
        if not token:
            sys.exit(f"faultlab-node: --agent-token-file {token_file} is empty; write the token into it "
                     f"or leave the flag out to disable the fault agent")
    elif token and token != env_default("agent_token"):
        logging.getLogger("faultlab.node").warning(
            "--agent-token on the command line is readable by every local user (ps, /proc/PID/cmdline); "
            "pass FAULTLAB_AGENT_TOKEN or --agent-token-file instead")
    return token


def _install_fast_loop() -> None:
    """uvloop when it is installed (``FAULTLAB_UVLOOP=0`` keeps asyncio's own loop)."""
    if env_default("uvloop", "1").lower() not in ("0", "false", "no", "off"):
        try:
            import uvloop  # type: ignore[import-not-found]
        except ImportError:
            pass
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


if __name__ == "__main__":
    main()
