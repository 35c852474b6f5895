"""APRIL-GAN: linear projections of four layers' patch tokens compared with a fixed prompt ensemble (CVPRw 2023)."""
from ..registry import Method, register_method
from .config import AprilGANConfig, AprilGANTraining

METHOD = register_method(Method(name="aprilgan", title="APRIL-GAN", config=AprilGANConfig,
                                training=AprilGANTraining, paper="models.aprilgan.paper:PAPER",
                                model="models.aprilgan.model:AprilGAN"))
