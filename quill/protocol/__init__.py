"""Quill over HTTP without IO: constants, name and header checks, compression, request building,
response classification and retry decisions. Nothing here imports socket, asyncio, urllib3 or
http.client; transports (quill.transports) move the bytes.
"""
