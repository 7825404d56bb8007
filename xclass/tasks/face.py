"""Face recognition: one aligned face image per row, one identity per row; open-set test
identities with verification pairs (``pairs.parquet``), evaluated by 10-fold pair accuracy and
gallery/query identification."""
from xclass.tasks.base import FEATURES, ID, LABEL, Col, PairFile, Table, Task, register_task

FACE = register_task(Task(
    name="face",
    table=Table(columns=(ID, LABEL, Col("image", "image", "uint8", required=False), FEATURES),
                input_groups=(("image",), ("features",)), label_column="label", decoder_inputs=("image",)),
    default_encoder="iresnet",
    generator="xclass.data.gen_face:FaceGenerator",
    protocols=("face", "ident"),
    pairs=PairFile("pairs.parquet", "pairs", ("a", "b", "same")),
    demo_args=("--num-classes", "300", "--rows-per-class", "20", "--test-classes", "60", "--opt", "image_size=16"),
    importers=("faces",),
    input_keys=("image.height", "image.width", "image.channels"),
))
