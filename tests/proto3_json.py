"""protobuf's own proto3 JSON printer and parser, for tests/client_cli.rs.

usage: proto3_json.py DESCRIPTOR_SET MESSAGE < json
Reads JSON that must be valid proto3 JSON for MESSAGE (either field-name style; unknown
fields refused) and writes it canonically: lowerCamelCase, 64-bit integers as strings,
fields at their defaults included.
"""
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

descriptors, name = sys.argv[1:3]
files = descriptor_pb2.FileDescriptorSet.FromString(open(descriptors, "rb").read())
pool = descriptor_pool.DescriptorPool()
for file in files.file:
    pool.Add(file)
message = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))()
json_format.Parse(sys.stdin.read(), message)
print(json_format.MessageToJson(message, always_print_fields_with_no_presence=True))
