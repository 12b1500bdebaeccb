# Included into llama.cpp's CMake project by scripts/build-llama-cpp.sh (CMAKE_PROJECT_INCLUDE):
# once every target is defined, ggml's and libllama's sources are compiled as unity builds
# (a few large translation units instead of hundreds of small ones). On two cores this takes
# the build of those libraries from many minutes to about one; the code is the same. llama.cpp's
# other targets do not build this way (mtmd and common refuse it), so they stay as they are.
cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL
    set_target_properties ggml-base ggml-cpu llama PROPERTIES UNITY_BUILD ON)
