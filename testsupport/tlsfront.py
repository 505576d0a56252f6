"""A TLS front for the test server: HTTPS on a loopback port, plain HTTP to the upstream,
with a self-signed certificate made for 127.0.0.1 (its PEM is the CA bundle a client trusts).

    front = TLSFront(('127.0.0.1', 8080), workdir).start()
    front.url('http://127.0.0.1:8080/api/v1')   # 'https://127.0.0.1:PORT/api/v1'
    front.cert_file                             # --ca-bundle for it
    front.stop()

One asyncio loop in one thread carries every connection (TLS on memory buffers: no SSL object
is used by two threads, and no socket is closed under another thread's call).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import ssl
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A new key and certificate for 127.0.0.1 in ``directory``: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'girderfs test CA')])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / 'cert.pem', directory / 'key.pem'
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_file, 0o600)
    return cert_file, key_file


class TLSFront:
    """HTTPS in front of an HTTP ``upstream`` (host, port)."""

    def __init__(self, upstream: tuple[str, int], workdir: Path) -> None:
        self.upstream = upstream
        self.cert_file, key_file = self_signed(workdir)
        self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ctx.load_cert_chain(self.cert_file, key_file)
        self.port = 0
        self.sessions = 0  # TLS sessions established (counted on the loop's thread only)
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None

    def url(self, upstream_url: str) -> str:
        """``upstream_url`` (an http URL of the upstream) through this front."""
        parts = urlsplit(upstream_url)
        return urlunsplit(('https', f'127.0.0.1:{self.port}', parts.path, parts.query, ''))

    def start(self) -> TLSFront:
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._main(),), name='tlsfront', daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError('the TLS front did not start')
        return self

    def stop(self) -> None:
        """Close the listener and every connection; wait for the loop's thread."""
        with contextlib.suppress(RuntimeError):  # the loop has already ended
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        tasks: set[asyncio.Task] = set()

        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.sessions += 1  # (called once the handshake succeeded)
            task = asyncio.ensure_future(self._serve(reader, writer))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        server = await asyncio.start_server(accepted, '127.0.0.1', 0, ssl=self._ctx,
                                            ssl_handshake_timeout=30)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy ``src`` to ``dst`` until ``src`` ends, then end ``dst``."""
    try:
        while data := await src.read(1 << 16):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if dst.can_write_eof():
                dst.write_eof()
            else:
                dst.close()
