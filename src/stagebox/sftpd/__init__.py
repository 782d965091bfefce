"""stagebox's own SFTP/SCP staging endpoint (asyncssh's server side).

Uploaders log in with the key an admin approved; each sees only its own staging
root; bytes are hashed as they are written, so a whole file is staged with the
server's digests and verified without being read again.
"""
