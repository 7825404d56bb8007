"""Encrypted-traffic classification (QUIC/TLS flows): the first packets' sizes, directions and
inter-arrival times plus flow statistics per row (and the server's port and IP protocol when the
importer knew them; ``source_file``: the row's input file, an index into meta.json
``source.files``, -1 unknown), one service per row; open-set test services,
evaluated by gallery/query identification (``gallery_query.parquet``)."""
from xclass.tasks.base import FEATURES, ID, LABEL, Col, Table, Task, register_task

QUIC = register_task(Task(
    name="quic",
    table=Table(columns=(ID, LABEL, Col("pkt_sizes", "fixed", "int", required=False),
                         Col("pkt_dirs", "fixed", "int", required=False),
                         Col("pkt_iat", "fixed", "float", required=False, finite=True),
                         Col("num_packets", "int", required=False),
                         Col("flow_stats", "fixed", "float", required=False, finite=True),
                         Col("server_port", "int", required=False), Col("ip_proto", "int", required=False),
                         Col("source_file", "int", required=False), FEATURES),
                input_groups=(("pkt_sizes", "pkt_dirs", "pkt_iat", "num_packets"), ("features",)),
                label_column="label",
                decoder_inputs=("pkt_sizes", "pkt_dirs", "pkt_iat", "num_packets", "flow_stats"),
                meta_inputs=(("ports", ("server_port", "ip_proto")),)),
    default_encoder="flowcnn",
    generator="xclass.data.gen_quic:QuicGenerator",
    protocols=("ident",),
    demo_args=("--num-classes", "300", "--rows-per-class", "20", "--test-classes", "60"),
    importers=("flows", "pcap"),
    input_keys=("flow_stats", "packets.num_packets", "packets.columns", "ports.columns"),
))
