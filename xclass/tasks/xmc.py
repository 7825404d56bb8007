"""Extreme multi-label classification: a document (token bag, raw text or features) per row
with a list of label ids from one shared label space; ``labels.parquet`` (side table
``xmc_labels``) describes the labels. Evaluated by P@k / nDCG@k / PSP@k of a label index."""
from xclass.tasks.base import FEATURES, ID, Col, Table, Task, register_task

LABEL_TABLE = Table(columns=(Col("label_id", "int"), Col("text", "string", required=False),
                             Col("tokens", "list", "int", required=False), FEATURES),
                    input_groups=(("text",), ("tokens",), ("features",)), label_column="label_id",
                    decoder_inputs=("tokens",), file="labels.parquet")

XMC = register_task(Task(
    name="xmc",
    table=Table(columns=(ID, Col("labels", "list", "int"), Col("tokens", "list", "int", required=False),
                         Col("text", "string", required=False), FEATURES),
                input_groups=(("tokens",), ("text",), ("features",)), label_column="labels",
                decoder_inputs=("tokens",), token_weights=True),
    default_encoder="embbag",
    generator="xclass.data.gen_xmc:XmcGenerator",
    protocols=("xmc",),
    multi_label=True,
    side_tables=(("xmc_labels", LABEL_TABLE),),
    demo_args=("--num-classes", "2000", "--num-rows", "20000", "--num-test-rows", "2000"),
    importers=("wordnet", "xc", "text"),
    input_keys=("tokens.vocab_size", "tokens.pad_id"),
    sequence_inputs=("tokens", "token_weights", "input_ids", "attention_mask"),
))
