"""Media types of the API's streams, shared by the daemon and the stdlib-only client.

A log frame is one or more whole lines of one stream as `ringjobs logs` prints them:
one ASCII digit for the stream (0 ringjobs' own, 1 stdout, 2 stderr), the length in
bytes as 8 lowercase hex digits, then the lines' UTF-8 bytes, each with its newline.
Nothing is escaped, so a line may hold any byte; the length says where the frame ends.
"""

NDJSON = "application/x-ndjson"
LOG_FRAMES = "application/vnd.ringjobs.log-frames"
FRAME_HEAD = 9  # the stream digit and the 8 hex digits of the length
FRAME_STREAMS = {0: "system", 1: "stdout", 2: "stderr"}
