"""Listens on ADDRESS at each PORT and keeps FILE up to date with how many connections each
port accepted ("PORT COUNT" lines), until killed: an enclave service for the network-silence
test's allow-list case."""
import selectors, socket, sys

address, *ports, path = sys.argv[1:]
selector = selectors.DefaultSelector()
counts = {}
for port in ports:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, int(port)))
    listener.listen(16)
    selector.register(listener, selectors.EVENT_READ, port)
    counts[port] = 0


def write():
    with open(path + ".new", "w") as f:
        f.writelines(f"{port} {count}\n" for port, count in counts.items())
    import os
    os.replace(path + ".new", path)


write()
while True:
    for key, _ in selector.select():
        connection, _ = key.fileobj.accept()
        connection.close()
        counts[key.data] += 1
        write()
