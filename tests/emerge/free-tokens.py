"""Print how many tokens the fifo jobserver named in MAKEFLAGS holds now.

Reads them on a private non-blocking description, then writes the same bytes
back. tests/emerge.rs runs it right after emerge exits, inside jsrun.
"""

import os

auth = [
    word.split(":", 1)[1]
    for word in os.environ.get("MAKEFLAGS", "").split()
    if word.startswith("--jobserver-auth=fifo:")
]
fd = os.open(auth[-1], os.O_RDWR | os.O_NONBLOCK)
tokens = b""
while True:
    try:
        byte = os.read(fd, 1)
    except BlockingIOError:
        break
    if not byte:
        break
    tokens += byte
os.write(fd, tokens)
print(len(tokens))
