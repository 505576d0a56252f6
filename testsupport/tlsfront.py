"""A TLS front for the test server: HTTPS on a loopback port, plain HTTP to the upstream,
with a self-signed certificate made for 127.0.0.1 (its PEM is the CA bundle a client trusts).

    front = TLSFront(('127.0.0.1', 8080), workdir).start()
    front.url('http://127.0.0.1:8080/api/v1')   # 'https://127.0.0.1:PORT/api/v1'
    front.cert_file                             # --ca-bundle for it
    front.stop()

Each accepted connection gets a thread that finishes the TLS handshake and connects to the
upstream, then two threads copying bytes until either side closes.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from testsupport.faultproxy import close_socket


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
        self._sock = socket.create_server(('127.0.0.1', 0))
        self.port = self._sock.getsockname()[1]
        self._stopped = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.handshakes_failed = 0

    def url(self, upstream_url: str) -> str:
        """``upstream_url`` (an http URL of the upstream) through this front."""
        parts = urlsplit(upstream_url)
        return urlunsplit(('https', f'127.0.0.1:{self.port}', parts.path, parts.query, ''))

    def start(self) -> TLSFront:
        threading.Thread(target=self._accept, name='tlsfront', daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._sock.close()
        with self._lock:
            for s in list(self._open):
                close_socket(s)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(30)
        try:
            client = self._ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):  # a client refusing our certificate ends here
            with self._lock:
                self.handshakes_failed += 1
            close_socket(raw)
            return
        client.settimeout(None)
        try:
            server = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            close_socket(client)
            return
        server.settimeout(None)
        with self._lock:
            self._open.update((client, server))
        threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
        self._pump(client, server)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            close_socket(src)
            close_socket(dst)

