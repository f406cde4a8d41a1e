// popek-img: the image tool on its own, the same code as `popek img`.
#include <string>
#include <vector>

#include "block/tool/img.h"

int main(int argc, char** argv) {
  std::vector<char*> args(argv, argv + argc);
  static char name[] = "img";
  args[0] = name;
  return popek::block::img_main(argc, args.data());
}
