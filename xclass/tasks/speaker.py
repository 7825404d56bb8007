"""Speaker recognition: a log-mel filterbank per utterance, one speaker per row; open-set test
speakers with verification trials (``trials.parquet``), evaluated by EER / minDCF and
gallery/query identification."""
from xclass.tasks.base import FEATURES, ID, LABEL, Col, PairFile, Table, Task, register_task

SPEAKER = register_task(Task(
    name="speaker",
    table=Table(columns=(ID, LABEL, Col("fbank", "list", "float", required=False, finite=True),
                         Col("num_frames", "int", required=False), FEATURES),
                input_groups=(("fbank", "num_frames"), ("features",)), label_column="label",
                decoder_inputs=("fbank", "num_frames")),
    default_encoder="ecapa",
    generator="xclass.data.gen_speaker:SpeakerGenerator",
    protocols=("speaker", "ident"),
    pairs=PairFile("trials.parquet", "trials", ("enroll", "test", "target")),
    demo_args=("--num-classes", "120", "--rows-per-class", "16", "--test-classes", "30",
               "--opt", "max_frames=80", "--opt", "min_frames=40"),
    importers=("audio",),
    input_keys=("fbank.n_mels", "fbank.sample_rate"),
    sequence_inputs=("fbank",),
))
