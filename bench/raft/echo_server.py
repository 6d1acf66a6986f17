"""A KV server that does nothing (answers Put at once): the ceiling of the Python gRPC stack.

Run by ``run.py`` as the ``grpc-floor`` system so faultlab's numbers can be read
against what grpc.aio itself costs on this machine (one process, no consensus,
no disk).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from faultlab.protos.raft.v1 import raft_pb2 as pb
from faultlab.protos.raft.v1 import raft_pb2_grpc as pb_grpc


class Echo(pb_grpc.KVServicer):
    async def Put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext) -> pb.PutResponse:
        return pb.PutResponse(header=pb.ResponseHeader(member_id="echo"))


async def main(address: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_KVServicer_to_server(Echo(), server)
    server.add_insecure_port(address)
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    if "--uvloop" in sys.argv:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    asyncio.run(main(sys.argv[1]))
