"""Damage done to a checkpoint file after its save, as a disk or a copy does it."""
import os


def flip_a_byte(path: str) -> None:
    """One bit of the middle byte flipped: inside a tensor's record, which torch.load reads without a word."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
