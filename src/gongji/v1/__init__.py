"""Generated from proto/gongji/v1 by scripts/gen_proto.py. Do not edit."""
