"""vgrl: reinforcement learning and preference optimisation for visual generative models.

Importing the package is cheap (no torch): heavy modules load on first use.
"""

__version__ = "0.1.0"


def _quiet_image_processor_fallback() -> None:
    """Drop transformers' one-line notice that its image processors fall back to PIL without torchvision.

    diffusers imports ``CLIPImageProcessor`` / ``SiglipImageProcessor`` for pipelines vgrl never feeds
    images through them; the PIL fallback is what vgrl wants, so the notice is noise on every command.
    Only that message is filtered; the logger and every other message are untouched.
    """
    import logging

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "requires torchvision (not installed)" not in record.getMessage()

    logging.getLogger("transformers.utils.import_utils").addFilter(_Filter())


_quiet_image_processor_fallback()
