"""Teacher loading, BK-SDM student builders, weight transfer, feature-KD pairs, hooks and export.

Students follow BK-SDM (Kim et al. 2023; configs and ``copy_weight_from_teacher`` of
github.com/Nota-NetsPresso/BK-SDM) and are plain ``UNet2DConditionModel`` configs:

- ``base``: one resnet+attention pair fewer per down stage (SD: 2 -> 1) and so per up stage (3 -> 2);
- ``small``: base without the mid block (``mid_block_type=None``);
- ``tiny``: small without the innermost down stage and the innermost (first) up stage;
- ``channels`` (aria's own): base depth, ``block_out_channels`` scaled by ``channel_scale``.

Weight mapping (``transfer_weights``): down stage i layer k <- teacher down stage i layer k (the first
layers are kept); up stages are aligned from the output end (student up j <- teacher up j + removed
stages); inside an up stage layer k <- layer k, except the student's last layer <- the teacher's last
(SD: 0 <- 0, 1 <- 2, as BK-SDM); everything else by identical name. A tensor is copied only when
the shapes agree; the report lists the rest.
"""

from aria.models.export import CARD_KEYS, export_student, parameter_count, random_world_unet, unet_from_config_file
from aria.models.features import FeatureCapture, FeaturePair, feature_pairs, primary_tensor, unwrap_module
from aria.models.students import (VARIANTS, TransferReport, build_student, student_unet_config, teacher_key_for,
                       transfer_weights)
from aria.models.teacher import SHIPPED_TEACHER, Teacher, load_teacher

__all__ = [
    "CARD_KEYS", "SHIPPED_TEACHER", "VARIANTS", "FeatureCapture", "FeaturePair", "Teacher", "TransferReport",
    "build_student", "export_student", "feature_pairs", "load_teacher", "parameter_count", "primary_tensor",
    "random_world_unet", "student_unet_config", "teacher_key_for", "transfer_weights", "unet_from_config_file",
    "unwrap_module",
]
