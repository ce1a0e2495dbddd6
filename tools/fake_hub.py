#!/usr/bin/env python3
"""A small local stand-in for the Hugging Face Hub, for punie's tests, demo and benchmark.

Serves model repositories from folders with the Hub's download protocol:
  GET /api/models/ORG/NAME[/revision/REV]        -> {"id", "sha", "siblings"}
  GET /api/models/ORG/NAME/tree/REV?recursive=.. -> file listing, paginated with Link: rel="next"
  HEAD/GET /ORG/NAME/resolve/REV/PATH            -> regular files: relative 307 to /api/resolve-cache/...?etag=..
                                                    LFS files: absolute 302 to a second "CDN" listener
Files matching --lfs (default *.safetensors) are LFS files (etag = sha256), others are git files
(etag = git blob sha1). Bodies honour Range and are sent with sendfile.

Faults (--fault SPEC, repeatable, or POST /_faults with one SPEC per line to replace them at run time):
  drop:GLOB:AFTER[:TIMES]          close the connection after AFTER bytes of a response for GLOB files
  corrupt:GLOB[:TIMES]             serve content with one byte changed
  slow:GLOB:BYTES_PER_SEC          throttle bodies
  ignore-range:GLOB                answer Range requests with 200 and the whole file
  status:CODE:URLGLOB[:TIMES[:RETRY_AFTER]]  answer requests whose URL path (or "METHOD path") matches
                                   with CODE
  ratelimit:URLGLOB:TIMES:SECONDS  429 with a RateLimit header (t=SECONDS)
  redirect-loop:GLOB               resolve URLs of matching files redirect to themselves
  evil-path:PATH                   add PATH (e.g. ../../x.json) to the tree listing
  bad-json:URLGLOB                 answer matching API requests with broken JSON
  odd-headers                      add malformed / oversized headers to every response
  huge:GLOB                        claim a size of 10^15 bytes for matching files in the listing
TLS: --tls-cert FILE --tls-key FILE serve both listeners over HTTPS (redirects and links then say https).
Access: --gated REPO (401 GatedRepo without token, 403 unless the token is in --token),
        --private REPO (401 RepoNotFound unless the token is in --token).
Introspection: GET /_log (JSON list of requests seen by both listeners), GET /_info.
"""
import argparse
import fnmatch
import hashlib
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n"


def git_blob_sha1(path, size):
    h = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Repo:
    def __init__(self, repo_id, folder, lfs_globs, sha_cache):
        self.id = repo_id
        self.folder = os.path.abspath(folder)
        self.files = {}  # path -> dict(size, oid, sha256 or None, real)
        for root, dirs, names in os.walk(self.folder):
            dirs.sort()
            for name in sorted(names):
                real = os.path.join(root, name)
                rel = os.path.relpath(real, self.folder).replace(os.sep, "/")
                size = os.path.getsize(real)
                entry = {"size": size, "real": real}
                if any(fnmatch.fnmatch(rel, g) for g in lfs_globs):
                    sha = sha_cache.get(rel) or file_sha256(real)
                    entry["sha256"] = sha
                    pointer = LFS_POINTER.format(sha, size).encode()
                    entry["oid"] = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
                else:
                    entry["sha256"] = None
                    entry["oid"] = git_blob_sha1(real, size)
                self.files[rel] = entry
        h = hashlib.sha1(repo_id.encode())
        for rel in sorted(self.files):
            h.update(rel.encode() + self.files[rel]["oid"].encode())
        self.commit = h.hexdigest()
        self.by_sha256 = {e["sha256"]: (rel, e) for rel, e in self.files.items() if e["sha256"]}

    def etag(self, rel):
        e = self.files[rel]
        return e["sha256"] or e["oid"]


class Fault:
    def __init__(self, spec):
        self.spec = spec
        parts = spec.split(":")
        self.kind = parts[0]
        self.args = parts[1:]
        self.left = None  # remaining uses, None = unlimited
        k, a = self.kind, self.args
        if k == "drop":
            self.glob, self.after = a[0], int(a[1])
            self.left = int(a[2]) if len(a) > 2 else 1
        elif k == "corrupt":
            self.glob = a[0]
            self.left = int(a[1]) if len(a) > 1 else None
        elif k == "slow":
            self.glob, self.rate = a[0], float(a[1])
        elif k in ("ignore-range", "redirect-loop", "huge"):
            self.glob = a[0]
        elif k == "status":
            self.code, self.glob = int(a[0]), a[1]
            self.left = int(a[2]) if len(a) > 2 and a[2] else None
            self.retry_after = a[3] if len(a) > 3 else None
        elif k == "ratelimit":
            self.glob, self.left, self.seconds = a[0], int(a[1]), int(a[2])
        elif k == "evil-path":
            self.path = ":".join(a)
        elif k == "bad-json":
            self.glob = a[0]
        elif k == "odd-headers":
            pass
        else:
            raise ValueError("unknown fault kind: " + k)


class Hub:
    def __init__(self, args):
        self.repos = {}
        sha_cache = {}
        if args.sha256_file:
            with open(args.sha256_file) as f:
                for line in f:
                    if line.strip():
                        digest, name = line.split(None, 1)
                        sha_cache[name.strip().lstrip("*")] = digest
        for spec in args.repo:
            repo_id, _, folder = spec.partition("=")
            self.repos[repo_id] = Repo(repo_id, folder, args.lfs, sha_cache)
        self.gated = set(args.gated)
        self.private = set(args.private)
        self.tokens = set(args.token)
        self.page_size = args.page_size
        self.tags = dict(t.split("=", 1) for t in args.tag)
        self.lock = threading.RLock()
        self.faults = [Fault(s) for s in args.fault]
        self.log = []
        self.cdn_port = 0
        self.quiet = args.quiet
        self.scheme = "https" if args.tls_cert else "http"

    def take(self, kind, target, url=False):
        """First matching fault of a kind that still has uses left (consuming one)."""
        with self.lock:
            for f in self.faults:
                if f.kind != kind or not fnmatch.fnmatch(target, f.glob):
                    continue
                if f.left is not None:
                    if f.left <= 0:
                        continue
                    f.left -= 1
                return f
        return None

    def has(self, kind):
        with self.lock:
            return [f for f in self.faults if f.kind == kind]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-hub/1"
    hub = None
    is_cdn = False

    def log_message(self, fmt, *a):
        if not self.hub.quiet:
            sys.stderr.write("[fake_hub%s] %s\n" % (" cdn" if self.is_cdn else "", fmt % a))

    # ---- helpers -------------------------------------------------------------------------
    def record(self):
        with self.hub.lock:
            self.hub.log.append({
                "listener": "cdn" if self.is_cdn else "hub",
                "method": self.command,
                "path": self.path,
                "range": self.headers.get("Range"),
                "authorization": self.headers.get("Authorization") is not None,
                "token": self.token(),
            })

    def token(self):
        auth = self.headers.get("Authorization") or ""
        return auth[7:] if auth.startswith("Bearer ") else None

    def odd_headers(self):
        if self.hub.has("odd-headers"):
            self.send_header("X-Odd", "x" * 6000)
            self.send_header("X-Linked-Size-Junk", "-17")
            self.send_header("Link", "<<<>>; rel=; ,,, <no-close; rel=\"prev\"")
            self.send_header("RateLimit", "t=;r=")
            self.send_header("X-Empty", "")

    def send(self, code, body=b"", headers=(), ctype="application/json"):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.odd_headers()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, code, error_code, message, extra=()):
        headers = [("X-Error-Code", error_code), ("X-Error-Message", message)] + list(extra)
        self.send(code, json.dumps({"error": message}), headers)

    def status_fault(self, path):
        f = self.hub.take("status", path) or self.hub.take("status", self.command + " " + path)
        if f:
            extra = [("Retry-After", f.retry_after)] if f.retry_after else []
            self.send(f.code, json.dumps({"error": "injected %d" % f.code}), extra)
            return True
        f = self.hub.take("ratelimit", path)
        if f:
            self.send(429, json.dumps({"error": "rate limited"}),
                      [("RateLimit", '"resolvers";r=0;t=%d' % f.seconds),
                       ("RateLimit-Policy", '"fixed window";"resolvers";q=3000;w=300')])
            return True
        return False

    def access_denied(self, repo_id):
        tok = self.token()
        if repo_id in self.hub.private and tok not in self.hub.tokens:
            self.error(401, "RepoNotFound", "Repository Not Found for url: " + self.path)
            return True
        if repo_id in self.hub.gated and tok not in self.hub.tokens:
            if tok is None:
                self.error(401, "GatedRepo", "Access to model %s is restricted. You must have access to it "
                           "and be authenticated to access it. Please log in." % repo_id)
            else:
                self.error(403, "GatedRepo", "Access to model %s is restricted and you are not in the "
                           "authorized list." % repo_id)
            return True
        return False

    def find_repo(self, org, name):
        repo = self.hub.repos.get(org + "/" + name)
        if repo is None:
            self.error(401, "RepoNotFound", "Repository Not Found for url: " + self.path)
        return repo

    def commit_for(self, repo, rev):
        if rev in ("main", repo.commit) or self.hub.tags.get(rev) == repo.id or rev in self.hub.tags:
            return repo.commit
        self.error(404, "RevisionNotFound", "Invalid rev id: " + rev)
        return None

    # ---- routing -------------------------------------------------------------------------
    def do_HEAD(self):
        self.route()

    def do_GET(self):
        self.route()

    def do_POST(self):
        self.record()
        if self.path == "/_faults":
            n = int(self.headers.get("Content-Length") or 0)
            specs = [s for s in self.rfile.read(n).decode().splitlines() if s.strip()]
            with self.hub.lock:
                self.hub.faults = [Fault(s) for s in specs]
            return self.send(200, "{}")
        self.send(404, "{}")

    def route(self):
        try:
            self.record()
            url = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(url.path)
            query = urllib.parse.parse_qs(url.query)
            if self.is_cdn:
                return self.cdn(path)
            if path == "/_log":
                with self.hub.lock:
                    return self.send(200, json.dumps(self.hub.log))
            if path == "/_info":
                return self.send(200, json.dumps({"cdn_port": self.hub.cdn_port, "repos": {
                    r.id: {"commit": r.commit, "files": {p: {"size": e["size"], "etag": r.etag(p)}
                                                         for p, e in r.files.items()}}
                    for r in self.hub.repos.values()}}))
            if self.status_fault(path):
                return
            parts = path.split("/")
            if path.startswith("/api/models/"):
                bad = [f for f in self.hub.has("bad-json") if fnmatch.fnmatch(path, f.glob)]
                if bad:
                    return self.send(200, '{"sha": [1, 2,, "tree": ')
                return self.api(parts[3:], query, url)
            if path.startswith("/api/resolve-cache/models/"):
                # /api/resolve-cache/models/ORG/NAME/COMMIT/PATH?etag=...
                org, name, commit = parts[4:7]
                rel = "/".join(parts[7:])
                repo = self.find_repo(org, name)
                if repo is None or self.access_denied(repo.id):
                    return
                if commit != repo.commit or rel not in repo.files:
                    return self.error(404, "EntryNotFound", "Entry not found")
                if "etag" not in query:
                    return self.error(400, "BadRequest", "resolve-cache needs its etag query parameter")
                e = repo.files[rel]
                return self.body(rel, e, [("ETag", '"%s"' % e["oid"]), ("X-Repo-Commit", repo.commit)])
            if len(parts) >= 6 and parts[3] == "resolve":
                return self.resolve(parts[1], parts[2], parts[4], "/".join(parts[5:]), url)
            self.send(404, json.dumps({"error": "not found"}))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def api(self, rest, query, url):
        if len(rest) < 2:
            return self.send(404, "{}")
        org, name = rest[0], rest[1]
        repo = self.find_repo(org, name)
        if repo is None or self.access_denied(repo.id):
            return
        if len(rest) == 2 or (len(rest) >= 4 and rest[2] == "revision"):
            rev = "/".join(rest[3:]) if len(rest) > 2 else "main"
            commit = self.commit_for(repo, rev)
            if commit is None:
                return
            info = {"id": repo.id, "modelId": repo.id, "sha": commit, "private": repo.id in self.hub.private,
                    "gated": "manual" if repo.id in self.hub.gated else False,
                    "siblings": [{"rfilename": p} for p in sorted(repo.files)]}
            return self.send(200, json.dumps(info))
        if len(rest) >= 4 and rest[2] == "tree":
            commit = self.commit_for(repo, rest[3])
            if commit is None:
                return
            items, dirs = [], set()
            for rel in sorted(repo.files):
                e = repo.files[rel]
                segs = rel.split("/")
                for i in range(1, len(segs)):
                    d = "/".join(segs[:i])
                    if d not in dirs:
                        dirs.add(d)
                        items.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": d})
                size = e["size"]
                if any(fnmatch.fnmatch(rel, f.glob) for f in self.hub.has("huge")):
                    size = 10 ** 15
                item = {"type": "file", "oid": e["oid"], "size": size, "path": rel}
                if e["sha256"]:
                    item["lfs"] = {"oid": e["sha256"], "size": size, "pointerSize": 134}
                items.append(item)
            for f in self.hub.has("evil-path"):
                items.append({"type": "file", "oid": "1" * 40, "size": 3, "path": f.path})
            start = int(query.get("cursor", ["0"])[0] or 0)
            page = items[start:start + self.hub.page_size]
            headers = []
            if start + self.hub.page_size < len(items):
                q = urllib.parse.parse_qs(url.query)
                q["cursor"] = [str(start + self.hub.page_size)]
                nxt = "%s://%s%s?%s" % (self.hub.scheme, self.headers.get("Host"), url.path,
                                        urllib.parse.urlencode(q, doseq=True))
                headers.append(("Link", '<%s>; rel="next"' % nxt))
            return self.send(200, json.dumps(page), headers)
        self.send(404, "{}")

    def resolve(self, org, name, rev, rel, url):
        repo = self.find_repo(org, name)
        if repo is None or self.access_denied(repo.id):
            return
        commit = self.commit_for(repo, rev)
        if commit is None:
            return
        if rel not in repo.files:
            return self.error(404, "EntryNotFound", "Entry not found", [("X-Repo-Commit", commit)])
        if self.hub.take("redirect-loop", rel):
            return self.send(302, "", [("Location", url.path + ("?" + url.query if url.query else ""))])
        e = repo.files[rel]
        if e["sha256"]:
            loc = "%s://127.0.0.1:%d/cdn/%s?Expires=9999999999&Signature=abc%%3D&rel=%s" % (
                self.hub.scheme, self.hub.cdn_port, e["sha256"], urllib.parse.quote(rel))
            return self.send(302, "redirecting", [
                ("Location", loc), ("X-Linked-Etag", '"%s"' % e["sha256"]), ("X-Linked-Size", str(e["size"])),
                ("X-Repo-Commit", commit), ("ETag", '"not-the-content-etag"')], ctype="text/plain")
        loc = "/api/resolve-cache/models/%s/%s/%s/%s?etag=%%22%s%%22" % (
            org, name, commit, urllib.parse.quote(rel), e["oid"])
        self.send(307, "", [("Location", loc), ("X-Repo-Commit", commit)], ctype="text/plain")

    def cdn(self, path):
        if self.headers.get("Authorization") is not None:
            # A real CDN would reject or log it; the tests must notice.
            return self.send(400, json.dumps({"error": "Authorization header sent to the CDN"}))
        if self.status_fault(path):
            return
        parts = path.split("/")
        if len(parts) != 3 or parts[1] != "cdn":
            return self.send(404, "{}")
        for repo in self.hub.repos.values():
            hit = repo.by_sha256.get(parts[2])
            if hit:
                rel, e = hit
                return self.body(rel, e, [("ETag", '"%s"' % e["sha256"])])
        self.send(404, "{}")

    def body(self, rel, e, headers):
        size = e["size"]
        start, end = 0, size - 1
        code = 200
        rng = self.headers.get("Range")
        if rng and not self.hub.take("ignore-range", rel):
            try:
                unit, spec = rng.split("=", 1)
                a, b = spec.split("-", 1)
                start = int(a)
                end = int(b) if b else size - 1
                if unit.strip() != "bytes" or start > end or start >= size:
                    raise ValueError
                end = min(end, size - 1)
                code = 206
            except ValueError:
                return self.send(416, "", [("Content-Range", "bytes */%d" % size)])
        length = end - start + 1 if size else 0
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if code == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
        for k, v in headers:
            self.send_header(k, v)
        self.odd_headers()
        self.end_headers()
        if self.command == "HEAD" or length == 0:
            return
        drop = self.hub.take("drop", rel)
        corrupt = self.hub.take("corrupt", rel)
        slow = [f for f in self.hub.has("slow") if fnmatch.fnmatch(rel, f.glob)]
        self.wfile.flush()
        with open(e["real"], "rb") as fh:
            if isinstance(self.connection, ssl.SSLSocket) and not (drop or corrupt or slow):
                # os.sendfile would bypass TLS; the socket's own sendfile encrypts.
                self.connection.sendfile(fh, start, length)
                return
            if not (drop or corrupt or slow):
                sock = self.connection
                off, left = start, length
                while left > 0:
                    sent = os.sendfile(sock.fileno(), fh.fileno(), off, min(left, 1 << 30))
                    if sent == 0:
                        break
                    off += sent
                    left -= sent
                return
            limit = min(length, drop.after) if drop else length
            fh.seek(start)
            pos, sent = start, 0
            mid = size // 2
            rate = slow[0].rate if slow else None
            t0 = time.monotonic()
            while sent < limit:
                n = min(64 * 1024 if not rate else max(1, int(rate / 20)), limit - sent)
                block = bytearray(fh.read(n))
                if not block:
                    break
                if corrupt and pos <= mid < pos + len(block):
                    block[mid - pos] ^= 0xFF
                self.wfile.write(block)
                pos += len(block)
                sent += len(block)
                if rate:
                    self.wfile.flush()
                    wait = t0 + sent / rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
            if drop:
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients hanging up (and our own dropped connections) are part of the game, not errors.
        # A client refusing our certificate is what the TLS tests expect.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, ssl.SSLError)):
            return
        super().handle_error(request, client_address)


def make_server(hub, port, cdn, host, tls=None):
    handler = type("H", (Handler,), {"hub": hub, "is_cdn": cdn})
    srv = Server((host, port), handler)
    srv.daemon_threads = True
    if tls:
        # Handshake lazily in the handler thread, so a failing client cannot stall the accept loop.
        srv.socket = tls.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    return srv


def main():
    p = argparse.ArgumentParser(description="Local fake Hugging Face Hub for tests and benchmarks.",
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", action="append", default=[], metavar="ORG/NAME=DIR", help="serve DIR as repo ORG/NAME")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="hub port (0 = any free port)")
    p.add_argument("--cdn-port", type=int, default=0, help="CDN port for LFS files (0 = any free port)")
    p.add_argument("--port-file", help="write the hub port here once listening")
    p.add_argument("--page-size", type=int, default=1000, help="tree listing page size")
    p.add_argument("--lfs", action="append", default=None, metavar="GLOB", help="LFS files (default *.safetensors)")
    p.add_argument("--gated", action="append", default=[], metavar="REPO")
    p.add_argument("--private", action="append", default=[], metavar="REPO")
    p.add_argument("--token", action="append", default=[], help="tokens that may read gated/private repos")
    p.add_argument("--tag", action="append", default=[], metavar="NAME=REPO", help="extra revision name")
    p.add_argument("--fault", action="append", default=[], metavar="SPEC")
    p.add_argument("--sha256-file", help="sha256sum-style file with precomputed hashes (relative names)")
    p.add_argument("--quiet", action="store_true", help="no request log on stderr")
    p.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (chain)")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    args = p.parse_args()
    if args.lfs is None:
        args.lfs = ["*.safetensors"]
    if not args.repo:
        p.error("give at least one --repo ORG/NAME=DIR")
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    hub = Hub(args)
    srv = make_server(hub, args.port, False, args.host, tls)
    cdn = make_server(hub, args.cdn_port, True, args.host, tls)
    hub.cdn_port = cdn.server_address[1]
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    if not args.quiet:
        sys.stderr.write("fake hub on %s://%s:%d (CDN port %d)\n" % (hub.scheme, args.host, port, hub.cdn_port))
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
