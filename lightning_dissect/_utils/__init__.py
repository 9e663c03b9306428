"""Private helpers of lightning-dissect; nothing here is public API.

File writes, wording, progress, process groups, torch's messages, argument checks and the shims of
moved import paths. The modules import nothing of the package above them.
"""
