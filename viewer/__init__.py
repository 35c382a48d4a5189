"""medsam_edge.viewer: `medsam-edge view`, a local web page over the real-time session.

    medsam-edge view models/lite_medsam clip.mp4          # prints http://127.0.0.1:8765/

The pieces, data flowing one way: engine (source -> real-time session -> ring buffer,
freeze and edits) -> publisher (JPEG + RLE masks, newest only) -> server (Starlette,
one socket per page, a page gets fewer, newer frames when it is slow) -> static/ (the
page: plain HTML/JS/CSS). protocol says what travels on the socket; state builds the one
JSON both the page and GET /api/state read. Starlette and uvicorn come with the
`viewer` extra: `pip install 'medsam-edge[viewer]'`.
"""
