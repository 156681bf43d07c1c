"""An issuer for the tests: signing keys with kids, and their JWK Set served over HTTP.

The JWKS server is an asyncio server on a free loopback port, in a thread of its own (the
tests' own event loops come and go with each ``asyncio.run``); it answers every request with
the set as it is at that moment, or with a failure the test chose.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


class SigningKey:
    """A private key and its kid; ``token`` mints, ``jwk`` is the public half to publish."""

    def __init__(self, kid: str, kind: str = "EC") -> None:
        self.kid = kid
        self.key: Any = (ec.generate_private_key(ec.SECP256R1()) if kind == "EC" else
                         rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self.alg = "ES256" if kind == "EC" else "RS256"

    def jwk(self) -> dict[str, Any]:
        algorithm = ECAlgorithm if self.alg == "ES256" else RSAAlgorithm
        out: dict[str, Any] = json.loads(algorithm.to_jwk(self.key.public_key()))
        out.update(kid=self.kid, use="sig", alg=self.alg)
        return out

    def token(self, subscribe: list[str], ttl: float,
              publish: list[str] | None = None) -> tuple[str, int]:
        """A token and its exp (epoch s)."""
        exp = int(time.time() + ttl)
        claims = {"ssedge": {"subscribe": subscribe, "publish": publish or []}, "exp": exp}
        return jwt.encode(claims, self.key, algorithm=self.alg,
                          headers={"kid": self.kid}), exp


class JwksServer:
    """Serves ``{"keys": [...]}`` of the keys it is given at ``url``; ``fail`` makes it answer
    500 (``"status"``) or close the connection at once (``"drop"``)."""

    def __init__(self, keys: list[SigningKey], port: int = 0) -> None:
        self.keys = list(keys)
        self.fail: str | None = None
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, args=(port,), daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._server is None:
            raise RuntimeError("JWKS server did not start")
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/keys"

    def _run(self, port: int) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._answer, "127.0.0.1", port)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            self.requests += 1
            if self.fail == "drop":
                return
            status = "500 Internal Server Error" if self.fail == "status" else "200 OK"
            body = json.dumps({"keys": [k.jwk() for k in self.keys]}).encode()
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                         + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
