"""The tamper-evidence formats, exact enough for a third party to verify with its own code.

- `merkle`: the RFC 6962/9162 tree: leaf and node hashes, roots, inclusion and
  consistency proofs and their verification;
- `leaf`: the versioned, canonical bytes of one stored event (what a leaf hashes);
- `note`: C2SP signed notes with Ed25519 keys;
- `checkpoint`: the C2SP tlog-checkpoint body, with the time and the previous
  checkpoint's hash as extension lines.

Pure functions and values, no I/O: the store, the worker, the API and the offline
verifier share them. `docs/tamper-evidence.md` states the same algorithms in words.
"""
