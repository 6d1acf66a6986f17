"""The fault agent every node process hosts (`faultlab.agent.v1.FaultAgent`).

Node kinds call::

    agent = attach_agent(ctx)
    server = ctx.create_server()
    if agent:
        agent.add_to_server(ctx.agent_host())

`ctx.agent_host()` is the data server, or with `--agent-listen HOST:PORT` a server of the
agent's own on that address (with gRPC health), so the agent port can be closed to all but
the operator. Either way the agent's interceptors sit on the data server and the peer
channels: network faults act on data traffic.

Hooks: `ctx.hooks["fault_injected"]` / `ctx.hooks["fault_recovered"]`, when set, are
called with the `Fault` after it is applied / undone. The engine talks to the agent
through `faultlab.nodes.agent.client.AgentClient` and builds faults with `fault_from_spec`.
"""

from __future__ import annotations

import logging

from faultlab.nodes.agent.client import AgentClient, fault_from_spec
from faultlab.nodes.agent.resources import heal_leftover_corruption, remove_stale_ballast
from faultlab.nodes.agent.service import Agent
from faultlab.nodes.common.node import NodeContext

# What a member's replies to a peer stand for: a Peer.Send of its own to that peer.
PEER_SEND = "/faultlab.raft.v1.Peer/Send"

__all__ = ["Agent", "AgentClient", "attach_agent", "fault_from_spec"]

log = logging.getLogger("faultlab.agent")


def attach_agent(ctx: NodeContext) -> Agent | None:
    """Creates the agent and installs its interceptors; None (agent disabled) without an agent token.

    Data faults left on disk by a previous process (ballast, flipped bytes) are undone first.

    Call before `ctx.create_server()` (the server takes its interceptors at creation) and
    before opening peer channels; then add it to `ctx.agent_host()`.
    """
    remove_stale_ballast(ctx.data_dir)
    for note in heal_leftover_corruption(ctx.data_dir):
        log.warning("the node started although a corruption fault of a previous process was still on disk "
                    "(a torn tail truncated or an older snapshot used); %s", note)
    if not ctx.agent_token:
        log.info("fault agent disabled: no agent token%s",
                 f" (nothing listens on --agent-listen {ctx.agent_listen})" if ctx.agent_listen else "")
        return None
    agent = Agent(ctx)
    ctx.server_interceptors.append(agent.network.server_interceptor())
    ctx.client_interceptor_factories.append(agent.client_interceptors)
    network = agent.network
    ctx.outbound_faulted = lambda peer_id: network.shapes(inbound=False, peer=peer_id, method=PEER_SEND)
    ctx.inbound_faulted = lambda peer_id: network.shapes(inbound=True, peer=peer_id, method=PEER_SEND)
    return agent
