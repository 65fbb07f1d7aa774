// Lets runtime_android be opened on its own in Android Studio (File > Open this folder). In an
// app, include it as a module instead (a build folder's INTEGRATION.md): the app's settings
// then decide the plugin versions and this file is not read. Not built here (README.md).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
    plugins {
        id("com.android.library") version "8.7.3"
        id("org.jetbrains.kotlin.android") version "2.1.0"
    }
}
dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "dynexport-runtime"
