"""SQLFlow's wire protocol: sqlflow.proto and the modules generated from it (scripts/gen_proto.sh)."""
