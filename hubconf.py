"""torch.hub / s3prl entry points: ``speech_ssl_compress(ckpt)`` -> an s3prl ``UpstreamExpert``.

In s3prl, put this file (or one importing from it) at ``s3prl/upstream/speech_ssl_compress/hubconf.py``
with this toolkit installed, then ``run_downstream.py -u speech_ssl_compress -k MODEL_FILE``.
With torch.hub: ``torch.hub.load(TOOLKIT_DIR, "speech_ssl_compress", ckpt=MODEL_FILE, source="local")``.
"""

dependencies = ["torch"]


def speech_ssl_compress(ckpt: str, *args, **kwargs):
    """Any model file the toolkit writes (or a factory name such as ``hubert_base``)."""
    from evaluation.s3prl_expert import UpstreamExpert

    return UpstreamExpert(ckpt, *args, **kwargs)


def speech_ssl_compress_local(ckpt: str, *args, **kwargs):
    """s3prl's ``*_local`` naming for a local checkpoint path."""
    return speech_ssl_compress(ckpt, *args, **kwargs)
