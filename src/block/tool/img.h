// `popek img`: create, inspect, check and convert disk images.
#pragma once

namespace popek::block {

// argv[0] is the subcommand group name ("img"); argv[1] the subcommand.
// Returns the process exit status (see `popek img check --help` for check's).
int img_main(int argc, char** argv);

}  // namespace popek::block
